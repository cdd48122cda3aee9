"""SPEC §6 invariants, checked by SQL over the whole ledger, and the verdict of the last
periodic check (which the web's /metrics exposes)."""

import time
from dataclasses import dataclass, field

from django.db import connection, transaction

from stockflow.platform import redis_client
from stockflow.platform.sql import in_list

from .models import Batch, Job, RefundLine, Sale, SaleLine, StockMove, StockOnHand

_BATCH = Batch._meta.db_table
_ON_HAND = StockOnHand._meta.db_table
_MOVE = StockMove._meta.db_table
_SALE = Sale._meta.db_table
_LINE = SaleLine._meta.db_table
_REFUND_LINE = RefundLine._meta.db_table
_JOB = Job._meta.db_table
_SALE_OUT = f"'{StockMove.Kind.SALE_OUT}'"
_REFUND_IN = f"'{StockMove.Kind.REFUND_IN}'"
S = Sale.Status
_SOLD = in_list((S.PAID, S.PARTIALLY_REFUNDED, S.REFUNDED))
_UNSOLD = in_list((S.DRAFT, S.PENDING, S.CANCELLED))

# Each query returns the rows that violate one invariant.
CHECKS = {
    "on_hand_equals_moves": f"""
        SELECT b.id, soh.quantity, COALESCE(SUM(m.quantity), 0)
        FROM {_BATCH} b
        JOIN {_ON_HAND} soh ON soh.batch_id = b.id
        LEFT JOIN {_MOVE} m ON m.batch_id = b.id
        GROUP BY b.id, soh.quantity
        HAVING soh.quantity <> COALESCE(SUM(m.quantity), 0)""",
    "on_hand_not_negative": f"SELECT batch_id, quantity FROM {_ON_HAND} WHERE quantity < 0",
    "paid_sale_out_matches_lines": f"""
        SELECT l.id, l.quantity, COALESCE(-SUM(m.quantity), 0)
        FROM {_LINE} l
        JOIN {_SALE} s ON s.id = l.sale_id
        LEFT JOIN {_MOVE} m ON m.sale_line_id = l.id AND m.kind = {_SALE_OUT}
        WHERE s.status IN {_SOLD}
        GROUP BY l.id, l.quantity
        HAVING l.quantity <> COALESCE(-SUM(m.quantity), 0)""",
    "unpaid_sale_has_no_moves": f"""
        SELECT l.id FROM {_LINE} l JOIN {_SALE} s ON s.id = l.sale_id
        JOIN {_MOVE} m ON m.sale_line_id = l.id
        WHERE s.status IN {_UNSOLD}""",
    "refunded_not_beyond_sold": f"""
        SELECT l.id, l.quantity, SUM(r.quantity)
        FROM {_LINE} l JOIN {_REFUND_LINE} r ON r.sale_line_id = l.id
        GROUP BY l.id, l.quantity HAVING SUM(r.quantity) > l.quantity""",
    "refund_in_matches_refund_lines": f"""
        SELECT r.id, r.quantity, COALESCE(SUM(m.quantity), 0)
        FROM {_REFUND_LINE} r
        LEFT JOIN {_MOVE} m ON m.refund_line_id = r.id AND m.kind = {_REFUND_IN}
        GROUP BY r.id, r.quantity HAVING r.quantity <> COALESCE(SUM(m.quantity), 0)""",
    "refund_in_within_batch_sale_out": f"""
        SELECT so.sale_line_id, so.batch_id
        FROM (SELECT sale_line_id, batch_id, -SUM(quantity) AS q FROM {_MOVE}
              WHERE kind = {_SALE_OUT} GROUP BY 1, 2) so
        JOIN (SELECT rl.sale_line_id, m.batch_id, SUM(m.quantity) AS q
              FROM {_MOVE} m JOIN {_REFUND_LINE} rl ON rl.id = m.refund_line_id
              WHERE m.kind = {_REFUND_IN} GROUP BY 1, 2) ri
          ON ri.sale_line_id = so.sale_line_id AND ri.batch_id = so.batch_id
        WHERE ri.q > so.q""",
}

UNFINISHED_JOBS = (
    f"SELECT status, COUNT(*) FROM {_JOB} WHERE status IN {in_list(Job.UNFINISHED)} GROUP BY status"
)
COUNTED = (_BATCH, _MOVE, _SALE, _JOB)  # report.counts is keyed by these table names


@dataclass
class LedgerReport:
    violations: dict[str, list[tuple]] = field(default_factory=dict)
    unfinished_jobs: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not any(self.violations.values())


def check(on_step=None) -> LedgerReport:
    """Every check in one read-only transaction of its own (never nested in another).
    `on_step(name, done, total, seconds)` after each check: progress on a big ledger."""
    report = LedgerReport()
    with transaction.atomic(durable=True), connection.cursor() as cursor:
        # One snapshot for every query: a consistent picture even while workers write.
        # It must be the transaction's first statement.
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for done, (name, sql) in enumerate(CHECKS.items(), 1):
            started = time.monotonic()
            cursor.execute(sql + " LIMIT 20")
            report.violations[name] = cursor.fetchall()
            if on_step:
                on_step(name, done, len(CHECKS), time.monotonic() - started)
        cursor.execute(UNFINISHED_JOBS)
        report.unfinished_jobs = dict(cursor.fetchall())
        for table in COUNTED:
            cursor.execute(f"SELECT COUNT(*) FROM {table}")
            report.counts[table] = cursor.fetchone()[0]
    return report


# --- the periodic check's verdict --------------------------------------------------------

VERDICT_KEY = "stockflow:ledger-check"


def record_verdict(violations: int) -> None:
    """Keep the periodic check's verdict where every web process can read it."""
    redis_client.client().hset(
        VERDICT_KEY, mapping={"violations": violations, "checked_at": time.time()}
    )


def last_verdict() -> tuple[float, float] | None:
    """(violations, unix time checked) of the last periodic check; None before the first."""
    state = redis_client.client().hgetall(VERDICT_KEY)
    if not state:
        return None
    return float(state[b"violations"]), float(state[b"checked_at"])
