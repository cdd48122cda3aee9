from django.apps import AppConfig
from django.core import checks


class StockConfig(AppConfig):
    """Products, locations, batches, on-hand, the ledger, sales, refunds and jobs: one
    context, one app. Tables keep the names of the three apps they came from."""

    name = "stockflow.stock"
    label = "stock"

    def ready(self):
        from .checks import stored_timezones_are_valid

        checks.register(stored_timezones_are_valid, checks.Tags.database)
