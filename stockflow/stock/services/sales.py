"""Sales: creation, reading, and the transitions done in the request.

`paid` is a job (services/payment.py), refunds are jobs (services/refund.py).
Pure domain code: no HTTP, no Celery.
"""

from decimal import Decimal

from django.db import IntegrityError, transaction

from stockflow.platform import ids
from stockflow.platform.errors import DomainError, ErrorCode
from stockflow.stock import events, locks
from stockflow.stock.results import Outcome
from stockflow.stock.services import inventory

from ..models import Job, Sale, SaleLine

S = Sale.Status
# Transitions done in the request; `paid` is a job, refunds are jobs.
SYNC_TRANSITIONS = {S.DRAFT: {S.PENDING, S.CANCELLED}, S.PENDING: {S.CANCELLED}}
PAYABLE = {S.DRAFT, S.PENDING}


def get_sale(sale_id) -> Sale:
    sale = (
        Sale.objects.select_related("location").filter(pk=sale_id).first()
        if ids.plausible(sale_id)
        else None
    )
    if sale is None:
        raise DomainError(ErrorCode.NOT_FOUND, f"sale {sale_id} not found")
    return sale


@transaction.atomic
def create_sale(number: str, location_code: str, lines: list[dict]) -> Sale:
    location = inventory.location_by_code(location_code)
    products = {}
    missing = []
    for line in lines:
        try:
            products[line["sku"]] = inventory.product_by_sku(line["sku"])
        except DomainError:
            missing.append(line["sku"])
    if missing:
        raise DomainError(ErrorCode.UNKNOWN_SKU, f"unknown sku: {', '.join(sorted(set(missing)))}")
    try:
        with transaction.atomic():
            sale = Sale.objects.create(number=number, location=location)
    except IntegrityError:
        raise DomainError(ErrorCode.CONFLICT, f"sale number {number!r} already exists") from None
    SaleLine.objects.bulk_create(
        SaleLine(
            sale=sale,
            product=products[line["sku"]],
            quantity=line["quantity"],
            unit_price=Decimal(line["unit_price"]),
        )
        for line in lines
    )
    return sale


def locked(sale_id) -> Sale:
    """The sale, locked for the rest of the transaction (locks.sale), or NOT_FOUND."""
    sale = locks.sale(sale_id)
    if sale is None:
        raise DomainError(ErrorCode.NOT_FOUND, f"sale {sale_id} not found")
    return sale


def job_in_flight(sale_id: int, job_id) -> DomainError:
    return DomainError(
        ErrorCode.JOB_IN_FLIGHT,
        f"payment job {job_id} of sale {sale_id} has not finished: retry once it has",
    )


def check_no_payment_in_flight(sale: Sale) -> None:
    """JOB_IN_FLIGHT if a PAID job of the sale is queued or running. Such a sale changes
    only through that job: cancelled under it, the job would fail, and a repeated `paid`
    would answer with a job for a cancelled sale. Call it with the sale locked: a PAID
    accept share-locks the sale, so none can slip in before this transaction commits."""
    job_id = (
        Job.objects.filter(sale_id=sale.pk, kind=Job.Kind.SALE_PAID, status__in=Job.UNFINISHED)
        .values_list("pk", flat=True)
        .first()
    )
    if job_id is not None:
        raise job_in_flight(sale.pk, job_id)


def check_transition(sale: Sale, to_status: str) -> None:
    if to_status == S.PAID:
        allowed = sale.status in PAYABLE
    else:
        allowed = to_status in SYNC_TRANSITIONS.get(sale.status, ())
    if not allowed:
        raise DomainError(
            ErrorCode.INVALID_TRANSITION, f"cannot go from {sale.status} to {to_status}"
        )


@transaction.atomic
def transition(sale_id, to_status: str) -> Sale:
    """draft -> pending, draft|pending -> cancelled. `paid` goes through a job."""
    if to_status == S.PAID:
        raise DomainError(ErrorCode.INVALID_TRANSITION, "paid is asynchronous: submit it as a job")
    sale = locked(sale_id)
    from_status = sale.status
    try:
        check_transition(sale, to_status)
        check_no_payment_in_flight(sale)
    except DomainError as exc:
        events.transition(sale.pk, from_status, to_status, exc.code)
        raise
    sale.status = to_status
    sale.save(update_fields=["status", "updated_at"])
    events.transition(sale.pk, from_status, to_status, Outcome.SUCCESS)
    return sale
