"""sale.paid: the request that becomes a job, and the job that consumes stock FEFO.

`pay` runs inside the job's transaction, with the job row already locked.
"""

from django.db import transaction
from django.utils import timezone

from stockflow.platform import sql
from stockflow.platform.errors import DomainError, ErrorCode
from stockflow.stock import events, fefo, locks
from stockflow.stock.results import Moved, Outcome, PaymentResult
from stockflow.stock.services import inventory, outbox, sales

from ..models import Job, Product, Sale, SaleLine, StockMove

S = Sale.Status


def request_payment(sale_id, *, idempotency_key: str | None, request_id: str):
    """Accept `paid` as a job: (job, created). Decided with the sale locked: 404, then an
    earlier job (same key, or one in flight), then the transition check, then the insert."""
    request = outbox.JobRequest(
        Job.Kind.SALE_PAID, {"to_status": S.PAID}, idempotency_key, request_id
    )
    with transaction.atomic(savepoint=False):  # inside the request's audit transaction
        sale = sales.locked(sale_id)
        earlier = outbox.earlier(sale, request)
        if earlier is not None:
            return earlier, False
        try:
            sales.check_transition(sale, S.PAID)
        except DomainError as exc:
            events.transition(sale.pk, sale.status, S.PAID, exc.code)
            raise
        events.transition(sale.pk, sale.status, S.PAID, Outcome.ACCEPTED)
        return outbox.create(sale, request), True


def lines_with_sku(sale_id: int) -> list[SaleLine]:
    """The sale's lines with each product's sku (`line.sku`), in line order: one query
    on the job's hot path."""
    return sql.fetch(
        SaleLine,
        f"""SELECT {sql.columns(SaleLine, "l")}, p.sku FROM {SaleLine._meta.db_table} l
            JOIN {Product._meta.db_table} p ON p.id = l.product_id WHERE l.sale_id = %s ORDER BY l.id""",
        [sale_id],
    )


def pay(job: Job) -> PaymentResult:
    """Consume stock FEFO for every line and mark the sale paid, or raise a DomainError
    (the caller's transaction then rolls back whole)."""
    sale = locks.sale(job.sale_id)
    lines = lines_with_sku(sale.pk)
    if sale.status != S.PAID and sale.status not in sales.PAYABLE:
        raise DomainError(ErrorCode.INVALID_TRANSITION, f"cannot pay a {sale.status} sale")
    if sale.status == S.PAID:
        # An earlier delivery committed the effect; the moves prove it.
        moves = StockMove.objects.filter(sale_line__sale=sale, kind=StockMove.Kind.SALE_OUT)
        return PaymentResult(Outcome.IDEMPOTENT, S.PAID, moves.count())
    from_status = sale.status

    rows = locks.stock_of_products([line.product_id for line in lines], sale.location_id)
    requests = [
        fefo.LineRequest(line.pk, line.product_id, line.sku, line.quantity) for line in lines
    ]
    allocations = fefo.allocate(requests, rows, sale.location.today())

    now = timezone.now()
    moves = [
        StockMove(
            kind=StockMove.Kind.SALE_OUT,
            batch_id=a.on_hand.batch_id,
            quantity=-a.quantity,
            sale_line_id=a.line_id,
            job_id=job.pk,
            request_id=job.request_id,
            created_at=now,
        )
        for a in allocations
    ]
    inventory.write_moves(moves)
    sale.status = S.PAID
    sale.paid_at = now
    sale.save(update_fields=["status", "paid_at", "updated_at"])
    return PaymentResult(
        Outcome.SUCCESS,
        from_status,
        len(moves),
        tuple(Moved(a.line_id, a.on_hand.batch_id, a.quantity) for a in allocations),
    )
