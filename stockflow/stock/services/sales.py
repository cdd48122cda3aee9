"""Sales: creation, synchronous transitions, and the two stock jobs (pay, refund).

Pure domain code: no HTTP, no Celery. `pay` and `refund` expect to run inside the
job's transaction, with the job row already locked.
"""

from collections import defaultdict
from datetime import date
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from stockflow.platform import ids, sql
from stockflow.platform.errors import DomainError, ErrorCode
from stockflow.stock import events, fefo, locks
from stockflow.stock.models import Job, Product, StockMove
from stockflow.stock.services import inventory
from stockflow.stock.services import outbox as jobs

from ..models import Refund, RefundLine, Sale, SaleLine

S = Sale.Status
# Transitions done in the request; `paid` is a job, refunds are jobs.
SYNC_TRANSITIONS = {S.DRAFT: {S.PENDING, S.CANCELLED}, S.PENDING: {S.CANCELLED}}
PAYABLE = {S.DRAFT, S.PENDING}
REFUNDABLE = {S.PAID, S.PARTIALLY_REFUNDED}


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
            product=products[l["sku"]],
            quantity=l["quantity"],
            unit_price=Decimal(l["unit_price"]),
        )
        for l in lines
    )
    return sale


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
    sale = locks.sale(sale_id)
    if sale is None:
        raise DomainError(ErrorCode.NOT_FOUND, f"sale {sale_id} not found")
    from_status = sale.status
    try:
        check_transition(sale, to_status)
    except DomainError as exc:
        events.transition(sale.pk, from_status, to_status, exc.code)
        raise
    sale.status = to_status
    sale.save(update_fields=["status", "updated_at"])
    events.transition(sale.pk, from_status, to_status, "success")
    return sale


# --- sale.paid ------------------------------------------------------------------------


def lines_with_sku(sale_id: int) -> list[SaleLine]:
    """The sale's lines with each product's sku (`line.sku`), in line order: one query
    on the job's hot path."""
    return sql.fetch(
        SaleLine,
        f"""SELECT {sql.columns(SaleLine, "l")}, p.sku FROM {SaleLine._meta.db_table} l
            JOIN {Product._meta.db_table} p ON p.id = l.product_id WHERE l.sale_id = %s ORDER BY l.id""",
        [sale_id],
    )


def pay(job) -> dict:
    """Consume stock FEFO for every line and mark the sale paid, or raise a DomainError
    (the caller's transaction then rolls back whole)."""
    sale = locks.sale(job.sale_id)
    lines = lines_with_sku(sale.pk)
    if sale.status != S.PAID and sale.status not in PAYABLE:
        raise DomainError(ErrorCode.INVALID_TRANSITION, f"cannot pay a {sale.status} sale")
    if sale.status == S.PAID:
        # An earlier delivery committed the effect; the moves prove it.
        moves = StockMove.objects.filter(sale_line__sale=sale, kind=StockMove.Kind.SALE_OUT)
        return {"outcome": "idempotent", "from_status": S.PAID, "stock_moves_count": moves.count()}
    from_status = sale.status

    rows = locks.stock_of_products([l.product_id for l in lines], sale.location_id)
    requests = [fefo.LineRequest(l.pk, l.product_id, l.sku, l.quantity) for l in lines]
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
    return {
        "outcome": "success",
        "from_status": from_status,
        "stock_moves_count": len(moves),
        "total_quantity": sum(a.quantity for a in allocations),
        "moves": [
            {"sale_line_id": a.line_id, "batch_id": a.on_hand.batch_id, "quantity": a.quantity}
            for a in allocations
        ],
    }


# --- sale.refund ----------------------------------------------------------------------


def _per_batch_refundable(sale: Sale) -> dict[int, dict[int, int]]:
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
    sold = {l.pk: l.quantity for l in sale.lines.all()}
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


def check_refundable(sale: Sale) -> None:
    if sale.status not in REFUNDABLE:
        raise DomainError(ErrorCode.INVALID_TRANSITION, f"cannot refund a {sale.status} sale")


def refund(job) -> dict:
    """Write the refund, REFUND_IN moves back to the batches each line consumed
    (latest expiry first), and the sale's new status; or raise a DomainError."""
    sale = locks.sale(job.sale_id)
    existing = Refund.objects.filter(sale=sale, idempotency_key=job.idempotency_key).first()
    if existing is not None:
        return {"outcome": "idempotent", "refund_id": existing.pk}
    check_refundable(sale)
    kind = job.payload["kind"]
    wanted = requested_refund_lines(sale, kind, job.payload.get("lines"))
    left = _per_batch_refundable(sale)
    rows = {r.batch_id: r for r in locks.stock_of_batches({b for lid in wanted for b in left[lid]})}

    new_refund = Refund.objects.create(
        sale=sale, kind=kind, idempotency_key=job.idempotency_key, job_id=job.pk
    )
    refund_lines = RefundLine.objects.bulk_create(
        RefundLine(refund=new_refund, sale_line_id=lid, quantity=q)
        for lid, q in sorted(wanted.items())
    )
    now = timezone.now()
    moves = []
    for rl in refund_lines:
        need = rl.quantity
        # Latest expiry first (never-expiring counts as latest), newest batch breaks ties.
        batches = sorted(
            (b for b, q in left[rl.sale_line_id].items() if q > 0),
            key=lambda b: (
                rows[b].batch.expires_on is None,
                rows[b].batch.expires_on or date.min,
                b,
            ),
            reverse=True,
        )
        for batch_id in batches:
            take = min(need, left[rl.sale_line_id][batch_id])
            if take == 0:
                continue
            need -= take
            moves.append(
                StockMove(
                    kind=StockMove.Kind.REFUND_IN,
                    batch_id=batch_id,
                    quantity=take,
                    refund_line=rl,
                    job_id=job.pk,
                    request_id=job.request_id,
                    created_at=now,
                )
            )
            if need == 0:
                break
    inventory.write_moves(moves)

    total_left = sum(sum(b.values()) for b in left.values()) - sum(m.quantity for m in moves)
    sale.status = S.REFUNDED if total_left == 0 else S.PARTIALLY_REFUNDED
    sale.save(update_fields=["status", "updated_at"])
    return {
        "outcome": "success",
        "refund_id": new_refund.pk,
        "refund_kind": kind,
        "sale_status": sale.status,
        "stock_moves_count": len(moves),
        "total_quantity": sum(m.quantity for m in moves),
        "moves": [
            {
                "sale_line_id": m.refund_line.sale_line_id,
                "batch_id": m.batch_id,
                "quantity": m.quantity,
            }
            for m in moves
        ],
    }


# --- requests that become jobs ---------------------------------------------------------


def request_payment(sale_id, *, idempotency_key: str | None, request_id: str):
    def precheck(sale):
        try:
            check_transition(sale, S.PAID)
        except DomainError as exc:
            events.transition(sale.pk, sale.status, S.PAID, exc.code)
            raise
        events.transition(sale.pk, sale.status, S.PAID, "accepted")

    return jobs.accept(
        Job.Kind.SALE_PAID,
        sale_id,
        {"to_status": S.PAID},
        idempotency_key=idempotency_key,
        request_id=request_id,
        precheck=precheck,
    )


def request_refund(
    sale_id, kind: str, lines: list[dict] | None, *, idempotency_key: str, request_id: str
):
    payload = {"kind": kind}
    if kind == Refund.Kind.PARTIAL:
        payload["lines"] = sorted(lines, key=lambda l: (l["sale_line_id"], l["quantity"]))

    def precheck(sale):
        try:
            check_refundable(sale)
            requested_refund_lines(
                sale, kind, payload.get("lines")
            )  # over-refund now, not after a 202
        except DomainError as exc:
            events.refund_refused(sale.pk, kind, exc.code, exc.details)
            raise

    return jobs.accept(
        Job.Kind.SALE_REFUND,
        sale_id,
        payload,
        idempotency_key=idempotency_key,
        request_id=request_id,
        precheck=precheck,
    )
