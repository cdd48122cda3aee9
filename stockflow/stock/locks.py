"""Every row lock stockflow takes, and the one order they are taken in.

    job  ->  sale  ->  on-hand rows ordered by (product id, expiry [never-expires last], batch id)

A batch (several jobs in one transaction) takes each class in that order too: its jobs
with SKIP LOCKED (it never waits for a job), its sales by id, then all its on-hand rows.

Any transaction that holds more than one of these takes them in that order, so two
jobs can wait for each other but never deadlock. Which stock to *consume* (FEFO) is
decided after locking, in Python: locking order and consumption order are separate.

These are the hot path of every job and every accepted request, so they are written
as SQL (`stockflow.platform.sql.fetch` still returns model instances): building the same
queries through the ORM cost more CPU than running them.
"""

from django.db import connection

from stockflow.platform import ids, sql
from stockflow.stock.models import Batch, Job, Location, Sale, StockOnHand

_JOB = Job._meta.db_table
_SALE = Sale._meta.db_table
_LOCATION = Location._meta.db_table
_ON_HAND = StockOnHand._meta.db_table
_BATCH = Batch._meta.db_table
_STOCK_ORDER = "b.product_id, b.expires_on ASC NULLS LAST, b.id"


def job(job_id, *, lock_timeout_ms: int | None = None) -> Job | None:
    """The job, locked. lock_timeout_ms (inside a transaction): wait at most this long for
    another transaction's lock on it, then raise LockNotAvailable (wrapped in Django's
    OperationalError), whatever the connection's own lock_timeout."""
    job_uuid = ids.as_uuid(job_id)
    if job_uuid is None:
        return None
    if lock_timeout_ms is not None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", [str(lock_timeout_ms)])
    found = sql.fetch(
        Job, f"SELECT {sql.columns(Job, 'j')} FROM {_JOB} j WHERE j.id = %s FOR UPDATE", [job_uuid]
    )
    return found[0] if found else None


def jobs(job_ids) -> list[Job]:
    """The unfinished ones of these jobs, locked, in acceptance order. SKIP LOCKED: a job
    another transaction holds is that transaction's to settle (or its own delivery's)."""
    return sql.fetch(
        Job,
        f"""SELECT {sql.columns(Job, "j")} FROM {_JOB} j
            WHERE j.id = ANY(%s) AND j.status IN ('{Job.Status.QUEUED}', '{Job.Status.RUNNING}')
            ORDER BY j.created_at, j.id FOR UPDATE SKIP LOCKED""",
        [list(job_ids)],
    )


def sales(sale_ids) -> dict[int, Sale]:
    """These sales, locked in id order, each with its location (not locked) attached."""
    found = sql.fetch(
        Sale,
        f"""SELECT {sql.columns(Sale, "s")}, l.code AS location_code, l.timezone AS location_timezone
            FROM {_SALE} s JOIN {_LOCATION} l ON l.id = s.location_id
            WHERE s.id = ANY(%s) ORDER BY s.id FOR UPDATE OF s""",
        [sorted(set(sale_ids))],
    )
    for s in found:
        s.location = Location(id=s.location_id, code=s.location_code, timezone=s.location_timezone)
    return {s.pk: s for s in found}


def sale(sale_id) -> Sale | None:
    """The sale, locked, with its location (not locked) attached."""
    if not ids.plausible(sale_id):
        return None
    found = sql.fetch(
        Sale,
        f"""SELECT {sql.columns(Sale, "s")}, l.code AS location_code, l.timezone AS location_timezone
            FROM {_SALE} s JOIN {_LOCATION} l ON l.id = s.location_id
            WHERE s.id = %s FOR UPDATE OF s""",
        [sale_id],
    )
    if not found:
        return None
    s = found[0]
    s.location = Location(id=s.location_id, code=s.location_code, timezone=s.location_timezone)
    return s


def _stock(where: str, params: list) -> list[StockOnHand]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT soh.id, soh.quantity, b.id, b.product_id, b.location_id, b.lot, b.expires_on
                FROM {_ON_HAND} soh JOIN {_BATCH} b ON b.id = soh.batch_id
                WHERE {where} ORDER BY {_STOCK_ORDER} FOR UPDATE OF soh""",
            params,
        )
        rows = []
        for pk, quantity, batch_id, product_id, location_id, lot, expires_on in cursor.fetchall():
            row = StockOnHand(id=pk, batch_id=batch_id, quantity=quantity)
            row.batch = Batch(
                id=batch_id,
                product_id=product_id,
                location_id=location_id,
                lot=lot,
                expires_on=expires_on,
            )
            rows.append(row)
        return rows


def stock_of_products(product_ids, location_id) -> list[StockOnHand]:
    """All on-hand rows of these products at this location (expired ones too, to tell
    `expired_batch` from `insufficient_stock`), locked in the global order."""
    return _stock(
        "b.product_id = ANY(%s) AND b.location_id = %s", [sorted(set(product_ids)), location_id]
    )


def stock_of_products_at(pairs) -> list[StockOnHand]:
    """All on-hand rows of these (product id, location id) pairs, locked once in the global
    order: what a batch of sale.paid jobs may consume."""
    pairs = sorted(set(pairs))
    return _stock(
        "(b.product_id, b.location_id) IN (SELECT * FROM unnest(%s::bigint[], %s::bigint[]))",
        [[p for p, _ in pairs], [loc for _, loc in pairs]],
    )


def stock_of_batches(batch_ids) -> list[StockOnHand]:
    return _stock("b.id = ANY(%s)", [sorted(set(batch_ids))])


def stock_of_batch(batch_id) -> StockOnHand:
    return StockOnHand.objects.select_for_update().get(batch_id=batch_id)
