from django.apps import AppConfig


class InventoryConfig(AppConfig):
    name = "api.inventory"
    label = "inventory"
