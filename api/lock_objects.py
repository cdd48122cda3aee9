"""Every row lock stockflow takes, and the one order they are taken in.

    job  ->  sale  ->  on-hand rows ordered by (product id, expiry [never-expires last], batch id)

Any transaction that holds more than one of these takes them in that order, so two
jobs can wait for each other but never deadlock. Which stock to *consume* (FEFO) is
decided after locking, in Python: locking order and consumption order are separate.
"""
from django.db.models import F

from api.core import ids
from api.inventory.models import StockOnHand
from api.jobs.models import Job
from api.sales.models import Sale

_STOCK_ORDER = ("batch__product_id", F("batch__expires_on").asc(nulls_last=True), "batch_id")


def job(job_id) -> Job | None:
    return Job.objects.select_for_update().filter(pk=job_id).first()


def sale(sale_id) -> Sale | None:
    if not ids.plausible(sale_id):
        return None
    return Sale.objects.select_for_update(of=("self",)).select_related("location").filter(pk=sale_id).first()


def stock_of_products(product_ids, location_id) -> list[StockOnHand]:
    """All on-hand rows of these products at this location (expired ones too, to tell
    `expired_batch` from `insufficient_stock`), locked in the global order."""
    return list(
        StockOnHand.objects.select_for_update(of=("self",))
        .select_related("batch")
        .filter(batch__product_id__in=set(product_ids), batch__location_id=location_id)
        .order_by(*_STOCK_ORDER)
    )


def stock_of_batches(batch_ids) -> list[StockOnHand]:
    return list(
        StockOnHand.objects.select_for_update(of=("self",))
        .select_related("batch")
        .filter(batch_id__in=set(batch_ids))
        .order_by(*_STOCK_ORDER)
    )


def stock_of_batch(batch_id) -> StockOnHand:
    return StockOnHand.objects.select_for_update().get(batch_id=batch_id)
