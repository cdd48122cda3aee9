from django.apps import AppConfig


class LeadsConfig(AppConfig):
    name = "stockflow.leads"
    label = "leads"
