"""sale.paid: the request that becomes a job, and the job that consumes stock FEFO.

`pay` runs inside the job's transaction, with the job row already locked.
"""

from django.db import connection, transaction
from django.utils import timezone

from stockflow.platform import ids, sql
from stockflow.platform.errors import DomainError, ErrorCode
from stockflow.stock import events, fefo, locks
from stockflow.stock.results import Moved, Outcome, PaymentResult
from stockflow.stock.services import inventory, outbox, sales

from ..models import Job, Product, Sale, SaleLine, StockMove

S = Sale.Status


def request_payment(sale_id, *, idempotency_key: str | None, request_id: str):
    """Accept `paid` as a job: (job, created). Decided with the sale locked: 404, then an
    earlier job (same key, or one in flight: with another key JOB_IN_FLIGHT), then the
    transition check, then the insert."""
    request = outbox.JobRequest(
        Job.Kind.SALE_PAID, {"to_status": S.PAID}, idempotency_key, request_id
    )
    with transaction.atomic(savepoint=False):  # inside the request's audit transaction
        sale = sales.locked(sale_id)
        earlier = outbox.earlier(sale, request)
        if earlier is not None:
            if idempotency_key and earlier.idempotency_key != idempotency_key:
                # Another key's job is in flight: refused, not bound to that job. Bound,
                # key B's answer would depend on timing (retried after job A finished, B
                # would find no job of its own and be decided afresh); refused, B stays
                # unused and every retry of it is decided the same way. A request without
                # a key has nothing to bind: the job in flight is its answer.
                events.transition(sale.pk, sale.status, S.PAID, ErrorCode.JOB_IN_FLIGHT)
                raise sales.job_in_flight(sale.pk, earlier.pk)
            return earlier, False
        try:
            sales.check_transition(sale, S.PAID)
        except DomainError as exc:
            events.transition(sale.pk, sale.status, S.PAID, exc.code)
            raise
        events.transition(sale.pk, sale.status, S.PAID, Outcome.ACCEPTED)
        return outbox.create(sale, request), True


def request_payment_at_once(
    sale_id, *, idempotency_key: str | None, request_id: str, also=None
) -> Job | None:
    """Accept `paid` in one autocommitted statement when nothing stands in the way (see
    outbox.create_at_once; `also` makes the audit row written with the job). None: call
    request_payment, which decides every other case exactly (404, the same or an
    in-flight job, 409s)."""
    if not ids.plausible(sale_id):
        return None
    request = outbox.JobRequest(
        Job.Kind.SALE_PAID, {"to_status": S.PAID}, idempotency_key, request_id
    )
    accepted = outbox.create_at_once(sale_id, request, sales.PAYABLE, also)
    if accepted is None:
        return None
    job, from_status = accepted
    events.transition(sale_id, from_status, S.PAID, Outcome.ACCEPTED)
    return job


def lines_with_sku(sale_id: int) -> list[SaleLine]:
    """The sale's lines with each product's sku (`line.sku`), in line order: one query
    on the job's hot path."""
    return sql.fetch(
        SaleLine,
        f"""SELECT {sql.columns(SaleLine, "l")}, p.sku FROM {SaleLine._meta.db_table} l
            JOIN {Product._meta.db_table} p ON p.id = l.product_id WHERE l.sale_id = %s ORDER BY l.id""",
        [sale_id],
    )


def lines_of_sales(sale_ids) -> dict[int, list[SaleLine]]:
    """`lines_with_sku` for many sales, in one query: {sale id: lines in line order}."""
    by_sale: dict[int, list[SaleLine]] = {}
    for line in sql.fetch(
        SaleLine,
        f"""SELECT {sql.columns(SaleLine, "l")}, p.sku FROM {SaleLine._meta.db_table} l
            JOIN {Product._meta.db_table} p ON p.id = l.product_id
            WHERE l.sale_id = ANY(%s) ORDER BY l.id""",
        [sorted(set(sale_ids))],
    ):
        by_sale.setdefault(line.sale_id, []).append(line)
    return by_sale


_MARK_PAID = f"""
    UPDATE {Sale._meta.db_table} SET status = '{S.PAID}', paid_at = %(now)s, updated_at = %(now)s
    WHERE id = ANY(%(ids)s)"""

BatchOutcome = PaymentResult | DomainError | Exception


def pay_batch(jobs: list[Job]) -> dict[object, BatchOutcome]:
    """`pay` for many jobs in one transaction (the jobs locked, in acceptance order):
    {job id: PaymentResult, or the DomainError that fails it, or an unexpected exception
    that leaves it out}. Sales, then every on-hand row the batch needs, are locked once;
    FEFO runs job by job against running balances (first come, first served); a job
    short of stock writes nothing. Moves + on-hand are one statement, sales one more."""
    outcomes: dict[object, BatchOutcome] = {}
    sales_by_id = locks.sales([job.sale_id for job in jobs])
    lines_by_sale = lines_of_sales(sales_by_id)
    payable = []
    for job in jobs:
        sale = sales_by_id.get(job.sale_id)
        if sale is None:
            outcomes[job.pk] = LookupError(f"sale {job.sale_id} of job {job.pk} not found")
            continue
        job.sale = sale  # its events read the status it kept (no query)
        if sale.status == S.PAID:
            # An earlier delivery committed the effect; the moves prove it (rare: no batching).
            moves = StockMove.objects.filter(sale_line__sale=sale, kind=StockMove.Kind.SALE_OUT)
            outcomes[job.pk] = PaymentResult(Outcome.IDEMPOTENT, S.PAID, moves.count())
        elif sale.status not in sales.PAYABLE:
            outcomes[job.pk] = DomainError(
                ErrorCode.INVALID_TRANSITION, f"cannot pay a {sale.status} sale"
            )
        else:
            payable.append((job, sale, lines_by_sale.get(sale.pk, [])))

    rows_by_key: dict[tuple[int, int], list] = {}
    needed = {(line.product_id, sale.location_id) for _, sale, lines in payable for line in lines}
    for row in locks.stock_of_products_at(needed) if needed else ():
        rows_by_key.setdefault((row.batch.product_id, row.batch.location_id), []).append(row)

    now = timezone.now()
    today: dict[int, object] = {}
    moves, paid = [], []
    for job, sale, lines in payable:  # acceptance order: first come, first served
        try:
            if sale.location_id not in today:
                today[sale.location_id] = sale.location.today()
            rows = [
                row
                for key in dict.fromkeys((line.product_id, sale.location_id) for line in lines)
                for row in rows_by_key.get(key, ())
            ]
            requests = [
                fefo.LineRequest(line.pk, line.product_id, line.sku, line.quantity)
                for line in lines
            ]
            allocations = fefo.allocate(requests, rows, today[sale.location_id])
        except Exception as exc:  # DomainError fails the job; anything else leaves it out
            outcomes[job.pk] = exc
            continue
        for a in allocations:
            a.on_hand.quantity -= a.quantity  # the running balance the next job sees
        moves.extend(_sale_out(job, allocations, now))
        paid.append(sale.pk)
        outcomes[job.pk] = PaymentResult(
            Outcome.SUCCESS,
            sale.status,
            len(allocations),
            tuple(Moved(a.line_id, a.on_hand.batch_id, a.quantity) for a in allocations),
        )
    inventory.write_moves(moves)
    if paid:
        with connection.cursor() as cursor:
            cursor.execute(_MARK_PAID, {"now": now, "ids": paid})
    return outcomes


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
    moves = _sale_out(job, allocations, now)
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


def _sale_out(job: Job, allocations: list[fefo.Allocation], now) -> list[StockMove]:
    """The SALE_OUT moves of one job's allocations (negative: stock leaves the batch)."""
    return [
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
