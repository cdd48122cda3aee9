from django.apps import AppConfig


class SalesConfig(AppConfig):
    name = "api.sales"
    label = "sales"
