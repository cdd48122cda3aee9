from django.apps import AppConfig


class StockConfig(AppConfig):
    """Products, locations, batches, on-hand, the ledger, sales, refunds and jobs: one
    context, one app. Tables keep the names of the three apps they came from."""

    name = "stockflow.stock"
    label = "stock"
