"""The bench process's own database work (after django.setup(), against our embedded
PostgreSQL): seeding, waiting for jobs, per-job statistics, server counters, statement logs.

Seeding goes through the ORM (stock through the real receive_stock service, so the ledger
is consistent; draft sales by bulk insert), because creating thousands of sales through
the API would only slow the run down and is not what is measured.
"""

from __future__ import annotations

import datetime
import random
import re
import time
from decimal import Decimal
from pathlib import Path

from django.db import connection
from django.db.models import Count, Max, Min

from harness.loadgen import latency_summary
from harness.progress import Progress
from stockflow.stock.models import Job, Location, Product, Sale, SaleLine
from stockflow.stock.services import inventory

BATCHES = 5


def seed_stock(location: str, skus: list[str], per_batch: int) -> None:
    Location.objects.get_or_create(code=location)
    Product.objects.bulk_create(
        [Product(sku=s, name=f"bench {s}") for s in skus], ignore_conflicts=True
    )
    for sku in skus:
        for b in range(1, BATCHES + 1):
            inventory.receive_stock(
                sku,
                location,
                f"LOT-{b}",
                datetime.date(2090 + b, 1, 1),
                per_batch,
                request_id="bench-seed",
            )


def seed_flash(location: str, sku: str, sellable: int, expired: int) -> list[int]:
    """One SKU, 5 batches: 4 sellable ones holding `sellable` units in uneven parts (so some
    sales straddle two batches and FEFO has to split them) and one batch that expired a month
    ago holding `expired` units. Returns the batch sizes, earliest expiry first."""
    Location.objects.get_or_create(code=location)
    Product.objects.get_or_create(sku=sku, defaults={"name": f"bench {sku}"})
    q = sellable // 4
    sizes = [q - 1, q + 1, q, sellable - 3 * q]
    today = datetime.date.today()
    inventory.receive_stock(
        sku, location, "LOT-EXPIRED", today - datetime.timedelta(days=30), expired,
        request_id="bench-seed",
    )  # fmt: skip
    for b, n in enumerate(sizes, 1):
        inventory.receive_stock(
            sku, location, f"LOT-{b}", today + datetime.timedelta(days=30 * b), n,
            request_id="bench-seed",
        )  # fmt: skip
    return sizes


def flash_outcome(sku: str, sale_ids: list[int], first_n: int) -> dict:
    """Per batch of the SKU: received, sold, on hand; and how many of the first `first_n`
    jobs by acceptance (created_at) succeeded (first come, first served)."""
    with connection.cursor() as c:
        c.execute(
            """SELECT b.lot, b.expires_on, oh.quantity,
                      COALESCE(SUM(m.quantity) FILTER (WHERE m.kind = 'RECEIPT'), 0)::bigint,
                      COALESCE(-SUM(m.quantity) FILTER (WHERE m.kind = 'SALE_OUT'), 0)::bigint
               FROM inventory_batch b JOIN inventory_product p ON p.id = b.product_id
               JOIN inventory_stockonhand oh ON oh.batch_id = b.id
               LEFT JOIN inventory_stockmove m ON m.batch_id = b.id
               WHERE p.sku = %s GROUP BY b.id, oh.quantity ORDER BY b.expires_on""",
            [sku],
        )
        batches = [
            {"lot": lot, "expires_on": str(exp), "on_hand": oh, "received": rec, "sold": sold}
            for lot, exp, oh, rec, sold in c.fetchall()
        ]
    first = list(
        paid_jobs(sale_ids).order_by("created_at", "id").values_list("status", flat=True)[:first_n]
    )
    return {
        "batches": batches,
        "first_accepted": len(first),
        "first_accepted_succeeded": sum(1 for s in first if s == Job.Status.SUCCEEDED),
    }


def spread_lines(n: int, skus: list[str], lines: int, rng: random.Random) -> list[list[str]]:
    return [rng.sample(skus, lines) for _ in range(n)]


def create_sales(
    prefix: str, location: str, lines_per_sale: list[list[str]], quantity: int = 1
) -> list[int]:
    """Draft sales (bulk insert); returns their ids in order."""
    loc = Location.objects.get(code=location)
    products = dict(
        Product.objects.filter(sku__in={s for ls in lines_per_sale for s in ls}).values_list(
            "sku", "id"
        )
    )
    sales = Sale.objects.bulk_create(
        [Sale(number=f"{prefix}-{i}", location=loc) for i in range(len(lines_per_sale))],
        batch_size=2000,
    )
    SaleLine.objects.bulk_create(
        [
            SaleLine(
                sale_id=s.pk,
                product_id=products[sku],
                quantity=quantity,
                unit_price=Decimal("9.99"),
            )
            for s, skus in zip(sales, lines_per_sale, strict=True)
            for sku in skus
        ],
        batch_size=5000,
    )
    return [s.pk for s in sales]


def paid_jobs(sale_ids: list[int]):
    # Ids of one bulk insert are consecutive; a range keeps the poll query cheap.
    return Job.objects.filter(
        kind=Job.Kind.SALE_PAID, sale_id__gte=min(sale_ids), sale_id__lte=max(sale_ids)
    )


def wait_jobs(sale_ids: list[int], expected: int, timeout: float) -> bool:
    """Poll until `expected` PAID jobs of these sales are finished. False on timeout."""
    qs = paid_jobs(sale_ids)
    deadline = time.monotonic() + timeout
    progress = Progress("  jobs finished", expected)
    while time.monotonic() < deadline:
        finished = qs.filter(status__in=Job.TERMINAL).count()
        if finished >= expected:
            return True
        progress.update(finished)
        time.sleep(0.1)
    return False


def job_stats(sale_ids: list[int]) -> dict:
    """jobs/s = finished jobs / (last finished_at - first created_at), outcomes, retries."""
    qs = paid_jobs(sale_ids)
    done = qs.filter(status__in=Job.TERMINAL)
    agg = done.aggregate(first=Min("created_at"), last=Max("finished_at"), n=Count("id"))
    outcomes = {
        (r["status"] if r["status"] == "succeeded" else f"failed:{r['error_code']}"): r["n"]
        for r in done.values("status", "error_code").annotate(n=Count("id"))
    }
    out = {
        "jobs": qs.count(),
        "finished": agg["n"],
        "outcomes": outcomes,
        "retried_jobs": qs.filter(attempts__gt=1).count(),
        "max_attempts": qs.aggregate(m=Max("attempts"))["m"] or 0,
        "deadlock_errors": qs.filter(error_message__icontains="deadlock").count(),
    }
    if agg["n"]:
        span = (agg["last"] - agg["first"]).total_seconds()
        out["span_s"] = round(span, 3)
        out["jobs_per_s"] = round(agg["n"] / span, 1) if span > 0 else None
        out["accept_to_finish_ms"] = latency_summary(
            [(f - c).total_seconds() for c, f in done.values_list("created_at", "finished_at")]
        )
    return out


def pg_stat_database() -> dict:
    with connection.cursor() as c:
        c.execute("""SELECT xact_commit, xact_rollback, tup_returned, tup_fetched, tup_inserted, tup_updated,
                            tup_deleted, deadlocks, sessions
                     FROM pg_stat_database WHERE datname = current_database()""")
        cols = [d.name for d in c.description]
        return dict(zip(cols, c.fetchone(), strict=True))


def connections() -> dict[str, int]:
    """Client backends on our database now, by application_name (PGAPPNAME)."""
    with connection.cursor() as c:
        c.execute("""SELECT application_name, COUNT(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND backend_type = 'client backend'
                     GROUP BY 1""")
        return {app or "?": n for app, n in c.fetchall()}


def wal_and_commits() -> tuple[int, int]:
    """(WAL bytes written so far, transactions committed in our database so far). The
    commit count is as fresh as the backends' last statistics flush (about a second)."""
    with connection.cursor() as c:
        c.execute("""SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, xact_commit
                     FROM pg_stat_database WHERE datname = current_database()""")
        return c.fetchone()


def available_extensions(names: tuple[str, ...] = ("pg_stat_statements",)) -> dict[str, bool]:
    with connection.cursor() as c:
        c.execute("SELECT name FROM pg_available_extensions WHERE name = ANY(%s)", [list(names)])
        found = {r[0] for r in c.fetchall()}
    return {n: n in found for n in names}


# --- statement log ---------------------------------------------------------------------------

PREFIX = "%m [%p] app=%a "
_LINE = re.compile(r"app=(?P<app>\S*) LOG:  (?:statement|execute [^:]*): (?P<sql>.*)$")


def statement_logging(on: bool) -> None:
    """log_statement=all with the application name in each line (ALTER SYSTEM + reload:
    existing sessions pick it up at their next command)."""
    with connection.cursor() as c:
        if on:
            c.execute("ALTER SYSTEM SET log_statement = 'all'")
            c.execute(f"ALTER SYSTEM SET log_line_prefix = '{PREFIX}'")
        else:
            c.execute("ALTER SYSTEM RESET log_statement")
            c.execute("ALTER SYSTEM RESET log_line_prefix")
        c.execute("SELECT pg_reload_conf()")
    time.sleep(1.0)


def classify(sql: str) -> str:
    word = sql.split(None, 1)[0].upper() if sql.strip() else "?"
    if word == "SELECT" and " FOR UPDATE" in sql.upper():
        return "SELECT FOR UPDATE"
    return (
        word
        if word
        in {
            "BEGIN",
            "COMMIT",
            "ROLLBACK",
            "SAVEPOINT",
            "RELEASE",
            "SELECT",
            "INSERT",
            "UPDATE",
            "DELETE",
            "SET",
            "WITH",  # the one-statement accept and batch writes are CTEs
        }
        else "other"
    )


def count_statements(log: Path, offset: int) -> dict[str, dict[str, int]]:
    """{application_name: {verb: count}} for statements logged after byte `offset`."""
    counts: dict[str, dict[str, int]] = {}
    with log.open("rb") as f:
        f.seek(offset)
        for raw in f:
            m = _LINE.search(raw.decode(errors="replace").rstrip("\n"))
            if not m:
                continue
            per_app = counts.setdefault(m["app"], {})
            verb = classify(m["sql"])
            per_app[verb] = per_app.get(verb, 0) + 1
    return counts


def count_log(log: Path, offset: int, needle: str) -> int:
    needle_b = needle.lower().encode()
    with log.open("rb") as f:
        f.seek(offset)
        return sum(1 for line in f if needle_b in line.lower())
