from django.apps import AppConfig


class LeadsConfig(AppConfig):
    name = "api.leads"
    label = "leads"
