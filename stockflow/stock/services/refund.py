"""sale.refund: the request that becomes a job, what may still be refunded, and the job
that gives stock back.

`refund` runs inside the job's transaction, with the job row already locked.
"""

from collections import defaultdict

from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from stockflow.platform.errors import DomainError, ErrorCode
from stockflow.stock import events, locks, refund_allocation
from stockflow.stock.results import Moved, Outcome, RefundResult
from stockflow.stock.services import inventory, outbox, sales

from ..models import Job, Refund, RefundLine, Sale, StockMove

S = Sale.Status
REFUNDABLE = {S.PAID, S.PARTIALLY_REFUNDED}


def request_refund(
    sale_id, kind: str, lines: list[dict] | None, *, idempotency_key: str, request_id: str
):
    """Accept a refund as a job: (job, created). Decided with the sale locked: 404, then
    an earlier job with this key, then what is refundable (over-refund now, not after a
    202), then the insert."""
    payload = {"kind": kind}
    if kind == Refund.Kind.PARTIAL:
        payload["lines"] = sorted(lines, key=lambda line: (line["sale_line_id"], line["quantity"]))
    request = outbox.JobRequest(Job.Kind.SALE_REFUND, payload, idempotency_key, request_id)
    with transaction.atomic(savepoint=False):  # inside the request's audit transaction
        sale = sales.locked(sale_id)
        earlier = outbox.earlier(sale, request)
        if earlier is not None:
            return earlier, False
        try:
            check_refundable(sale)
            requested_refund_lines(sale, kind, payload.get("lines"))
        except DomainError as exc:
            events.refund_refused(sale.pk, kind, exc.code, exc.details)
            raise
        return outbox.create(sale, request), True


def check_refundable(sale: Sale) -> None:
    if sale.status not in REFUNDABLE:
        raise DomainError(ErrorCode.INVALID_TRANSITION, f"cannot refund a {sale.status} sale")


def refunded_by_line(sale: Sale) -> dict[int, int]:
    rows = (
        RefundLine.objects.filter(refund__sale=sale)
        .values("sale_line_id")
        .annotate(q=Sum("quantity"))
    )
    return {r["sale_line_id"]: r["q"] for r in rows}


def requested_refund_lines(sale: Sale, kind: str, lines: list[dict] | None) -> dict[int, int]:
    """Validate a refund request against the sale; returns {sale_line_id: quantity}.
    Raises over_refund if any line would go beyond what was sold."""
    sold = {line.pk: line.quantity for line in sale.lines.all()}
    already = refunded_by_line(sale)
    if kind == Refund.Kind.FULL:
        wanted = {
            lid: q - already.get(lid, 0) for lid, q in sold.items() if q - already.get(lid, 0) > 0
        }
        if not wanted:
            raise DomainError(ErrorCode.OVER_REFUND, "nothing left to refund on this sale")
        return wanted
    wanted: dict[int, int] = defaultdict(int)
    for line in lines or []:
        if line["sale_line_id"] not in sold:
            raise DomainError(
                ErrorCode.UNKNOWN_SALE_LINE, f"sale line {line['sale_line_id']} is not on this sale"
            )
        wanted[line["sale_line_id"]] += line["quantity"]
    over = [
        {"sale_line_id": lid, "requested": q, "refundable": sold[lid] - already.get(lid, 0)}
        for lid, q in wanted.items()
        if q > sold[lid] - already.get(lid, 0)
    ]
    if over:
        raise DomainError(ErrorCode.OVER_REFUND, "refund exceeds what was sold", over)
    return dict(wanted)


def refundable_by_batch(sale: Sale) -> dict[int, dict[int, int]]:
    """{sale_line_id: {batch_id: quantity still refundable to that batch}}."""
    left: dict[int, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    moves = StockMove.objects.filter(
        sale_line__sale=sale, kind=StockMove.Kind.SALE_OUT
    ).values_list("sale_line_id", "batch_id", "quantity")
    for line_id, batch_id, qty in moves:
        left[line_id][batch_id] += -qty
    back = StockMove.objects.filter(
        refund_line__refund__sale=sale, kind=StockMove.Kind.REFUND_IN
    ).values_list("refund_line__sale_line_id", "batch_id", "quantity")
    for line_id, batch_id, qty in back:
        left[line_id][batch_id] -= qty
    return left


def refund(job: Job) -> RefundResult:
    """Write the refund, REFUND_IN moves back to the batches each line consumed
    (refund_allocation), and the sale's new status; or raise a DomainError."""
    sale = locks.sale(job.sale_id)
    existing = Refund.objects.filter(sale=sale, idempotency_key=job.idempotency_key).first()
    if existing is not None:
        return RefundResult(Outcome.IDEMPOTENT, existing.pk)
    check_refundable(sale)
    kind = job.payload["kind"]
    wanted = requested_refund_lines(sale, kind, job.payload.get("lines"))
    left = refundable_by_batch(sale)
    rows = locks.stock_of_batches({b for lid in wanted for b in left[lid]})
    allocations = refund_allocation.allocate(wanted, left, rows)

    new_refund = Refund.objects.create(
        sale=sale, kind=kind, idempotency_key=job.idempotency_key, job_id=job.pk
    )
    refund_lines = RefundLine.objects.bulk_create(
        RefundLine(refund=new_refund, sale_line_id=lid, quantity=q)
        for lid, q in sorted(wanted.items())
    )
    refund_line_of = {rl.sale_line_id: rl for rl in refund_lines}
    now = timezone.now()
    moves = [
        StockMove(
            kind=StockMove.Kind.REFUND_IN,
            batch_id=a.batch_id,
            quantity=a.quantity,
            refund_line=refund_line_of[a.sale_line_id],
            job_id=job.pk,
            request_id=job.request_id,
            created_at=now,
        )
        for a in allocations
    ]
    inventory.write_moves(moves)

    total_left = sum(sum(b.values()) for b in left.values()) - sum(a.quantity for a in allocations)
    sale.status = S.REFUNDED if total_left == 0 else S.PARTIALLY_REFUNDED
    sale.save(update_fields=["status", "updated_at"])
    return RefundResult(
        Outcome.SUCCESS,
        new_refund.pk,
        kind,
        sale.status,
        tuple(Moved(a.sale_line_id, a.batch_id, a.quantity) for a in allocations),
    )
