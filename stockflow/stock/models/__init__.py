"""The stock context's models: catalogue and stock (inventory), sales and refunds, jobs."""

from .inventory import Batch, Location, Product, StockMove, StockOnHand
from .jobs import Job
from .sales import Refund, RefundLine, Sale, SaleLine

__all__ = [
    "Batch",
    "Job",
    "Location",
    "Product",
    "Refund",
    "RefundLine",
    "Sale",
    "SaleLine",
    "StockMove",
    "StockOnHand",
]
