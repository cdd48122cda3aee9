"""SPEC §6 invariants, checked by SQL over the whole ledger."""

from dataclasses import dataclass, field

from django.db import connection

# Each query returns the rows that violate one invariant.
CHECKS = {
    "on_hand_equals_moves": """
        SELECT b.id, soh.quantity, COALESCE(SUM(m.quantity), 0)
        FROM inventory_batch b
        JOIN inventory_stockonhand soh ON soh.batch_id = b.id
        LEFT JOIN inventory_stockmove m ON m.batch_id = b.id
        GROUP BY b.id, soh.quantity
        HAVING soh.quantity <> COALESCE(SUM(m.quantity), 0)""",
    "on_hand_not_negative": "SELECT batch_id, quantity FROM inventory_stockonhand WHERE quantity < 0",
    "paid_sale_out_matches_lines": """
        SELECT l.id, l.quantity, COALESCE(-SUM(m.quantity), 0)
        FROM sales_saleline l
        JOIN sales_sale s ON s.id = l.sale_id
        LEFT JOIN inventory_stockmove m ON m.sale_line_id = l.id AND m.kind = 'SALE_OUT'
        WHERE s.status IN ('paid', 'partially_refunded', 'refunded')
        GROUP BY l.id, l.quantity
        HAVING l.quantity <> COALESCE(-SUM(m.quantity), 0)""",
    "unpaid_sale_has_no_moves": """
        SELECT l.id FROM sales_saleline l JOIN sales_sale s ON s.id = l.sale_id
        JOIN inventory_stockmove m ON m.sale_line_id = l.id
        WHERE s.status IN ('draft', 'pending', 'cancelled')""",
    "refunded_not_beyond_sold": """
        SELECT l.id, l.quantity, SUM(r.quantity)
        FROM sales_saleline l JOIN sales_refundline r ON r.sale_line_id = l.id
        GROUP BY l.id, l.quantity HAVING SUM(r.quantity) > l.quantity""",
    "refund_in_matches_refund_lines": """
        SELECT r.id, r.quantity, COALESCE(SUM(m.quantity), 0)
        FROM sales_refundline r
        LEFT JOIN inventory_stockmove m ON m.refund_line_id = r.id AND m.kind = 'REFUND_IN'
        GROUP BY r.id, r.quantity HAVING r.quantity <> COALESCE(SUM(m.quantity), 0)""",
    "refund_in_within_batch_sale_out": """
        SELECT so.sale_line_id, so.batch_id
        FROM (SELECT sale_line_id, batch_id, -SUM(quantity) AS q FROM inventory_stockmove
              WHERE kind = 'SALE_OUT' GROUP BY 1, 2) so
        JOIN (SELECT rl.sale_line_id, m.batch_id, SUM(m.quantity) AS q
              FROM inventory_stockmove m JOIN sales_refundline rl ON rl.id = m.refund_line_id
              WHERE m.kind = 'REFUND_IN' GROUP BY 1, 2) ri
          ON ri.sale_line_id = so.sale_line_id AND ri.batch_id = so.batch_id
        WHERE ri.q > so.q""",
}

UNFINISHED_JOBS = (
    "SELECT status, COUNT(*) FROM jobs_job WHERE status IN ('queued', 'running') GROUP BY status"
)


@dataclass
class LedgerReport:
    violations: dict[str, list[tuple]] = field(default_factory=dict)
    unfinished_jobs: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not any(self.violations.values())


def check() -> LedgerReport:
    report = LedgerReport()
    with connection.cursor() as cursor:
        # One snapshot for every query: a consistent picture even while workers write.
        cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            for name, sql in CHECKS.items():
                cursor.execute(sql + " LIMIT 20")
                report.violations[name] = cursor.fetchall()
            cursor.execute(UNFINISHED_JOBS)
            report.unfinished_jobs = dict(cursor.fetchall())
            for table in ("inventory_batch", "inventory_stockmove", "sales_sale", "jobs_job"):
                cursor.execute(f"SELECT COUNT(*) FROM {table}")
                report.counts[table] = cursor.fetchone()[0]
        finally:
            cursor.execute("COMMIT")
    return report
