"""sale.paid jobs settled in batches by a real prefork worker: a flash sale stays first
come, first served and FEFO; one job failing unexpectedly fails alone; duplicate
deliveries and a worker killed mid-batch have one effect per job. The jobs are accepted while no worker runs, so the queue
holds them all and the worker has to batch."""

import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from django.db import connection
from django.db.models import Count

from stockflow.stock import invariants
from stockflow.stock.models import Job, StockMove, StockOnHand
from tests import faults
from tests.api_helpers import on_hand, pay, product, receive, sale, wait_until
from workers import publish as dispatch

BATCH = 20  # small, so a few hundred jobs cross many batch boundaries


def wait_all(job_ids: list[str], timeout: float = 120) -> None:
    def finished():
        jobs = Job.objects.filter(pk__in=job_ids)
        return len(jobs) == len(job_ids) and all(j.is_terminal for j in jobs)

    wait_until(finished, timeout, "every job to finish")


def lock_waiters() -> int:
    """Backends of the test database waiting for a row lock right now."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cur.fetchone()[0]


class StockRowLock:
    """FOR UPDATE on on-hand rows from another session: a batch reaching them waits."""

    def __init__(self, batch_ids):
        self.conn = faults.lock_holder()
        self.conn.execute(
            f"SELECT 1 FROM {StockOnHand._meta.db_table} WHERE batch_id = ANY(%s) FOR UPDATE",
            [list(batch_ids)],
        ).fetchall()

    def release(self):
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()


def accepted_in_order(job_ids: list[str]) -> list[Job]:
    """The jobs in acceptance order (created_at, id), finished."""
    wait_all(job_ids)
    return list(Job.objects.filter(pk__in=job_ids).order_by("created_at", "id"))


def moves_per_sale() -> dict[int, int]:
    rows = (
        StockMove.objects.filter(kind="SALE_OUT")
        .values("sale_line__sale_id")
        .annotate(n=Count("id"))
        .values_list("sale_line__sale_id", "n")
    )
    return dict(rows)


def assert_ledger_clean():
    report = invariants.check()
    assert report.clean, report.violations


def test_flash_sale_is_first_come_first_served_and_fefo(client, worker_factory):
    product(client, "FLASH")
    lots = {f"E{i}": 20 * (i + 1) for i in range(5)}  # expiries 20, 40, … 100 days out
    for lot, days in lots.items():
        receive(client, "FLASH", lot, 20, days)
    receive(client, "FLASH", "EXPIRED", 50, -1)
    with ThreadPoolExecutor(8) as pool:
        sales = list(pool.map(lambda i: sale(client, f"S-FLASH-{i}", [("FLASH", 1)]), range(200)))
    job_ids = [pay(client, s["id"])["id"] for s in sales]  # accepted one after the other

    worker_factory(JOB_BATCH_SIZE=BATCH)
    jobs = accepted_in_order(job_ids)

    outcomes = Counter((j.status, j.error_code) for j in jobs)
    # Short jobs could have been covered by the expired lot only: `expired_batch`, as one by one.
    assert outcomes == {("succeeded", ""): 100, ("failed", "expired_batch"): 100}, outcomes
    # First come, first served, give or take the batches in flight (two pool processes).
    rank = {j.pk: i for i, j in enumerate(jobs)}
    for j in jobs:
        if j.status == "succeeded":
            assert rank[j.pk] < 100 + 2 * BATCH, (rank[j.pk], "succeeded too late")
        else:
            assert rank[j.pk] >= 100 - 2 * BATCH, (rank[j.pk], "refused too early")
    assert on_hand(client, "FLASH") == {**dict.fromkeys(lots, 0), "EXPIRED": 50}
    # Earliest expiry first: a job accepted two batches later never got an earlier lot.
    lot_of = dict(
        StockMove.objects.filter(kind="SALE_OUT", sale_line__product__sku="FLASH").values_list(
            "job_id", "batch__lot"
        )
    )
    order = list(lots)
    consumed = [order.index(lot_of[j.pk]) for j in jobs if j.status == "succeeded"]
    for i, later in enumerate(consumed):
        assert all(earlier <= later for earlier in consumed[: max(0, i - 2 * BATCH)]), consumed
    # Batched indeed: moves of one transaction share its timestamp.
    stamps = set(
        StockMove.objects.filter(kind="SALE_OUT", sale_line__product__sku="FLASH").values_list(
            "created_at", flat=True
        )
    )
    assert len(stamps) < 50, f"{len(stamps)} transactions for 100 jobs: not batched"
    assert_ledger_clean()


def install_failing_hook(number: str):
    """A trigger that makes one sale's UPDATE to `paid` fail: an unexpected, non-transient
    error inside the shared statement of the batch that holds it."""
    with connection.cursor() as cur:
        cur.execute(
            """
            CREATE OR REPLACE FUNCTION batch_test_reject_paid() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.status = 'paid' AND NEW.number = %s THEN
                RAISE EXCEPTION 'batch test hook rejected sale %%', NEW.number;
              END IF;
              RETURN NEW;
            END $$;
            DROP TRIGGER IF EXISTS batch_test_reject_paid ON sales_sale;
            CREATE TRIGGER batch_test_reject_paid BEFORE UPDATE ON sales_sale
              FOR EACH ROW EXECUTE FUNCTION batch_test_reject_paid();
            """,
            [number],
        )


def drop_failing_hook():
    with connection.cursor() as cur:
        cur.execute(
            "DROP TRIGGER IF EXISTS batch_test_reject_paid ON sales_sale;"
            "DROP FUNCTION IF EXISTS batch_test_reject_paid();"
        )


def test_a_job_failing_unexpectedly_fails_alone(client, worker_factory):
    product(client, "ODD")
    receive(client, "ODD", "L1", 100, 30)
    sales = [sale(client, f"S-ODD-{i}", [("ODD", 2)]) for i in range(12)]
    install_failing_hook("S-ODD-5")
    try:
        job_ids = [pay(client, s["id"])["id"] for s in sales]
        w = worker_factory(JOB_BATCH_SIZE=BATCH)
        jobs = accepted_in_order(job_ids)
    finally:
        drop_failing_hook()
    by_sale = {j.sale_id: j for j in jobs}
    bad = by_sale[sales[5]["id"]]
    assert (bad.status, bad.error_code) == ("failed", "error"), (bad.status, bad.error_code)
    assert "batch test hook rejected" in bad.error_message
    others = [j for j in jobs if j.pk != bad.pk]
    assert all(j.status == "succeeded" for j in others), [(j.status, j.error_code) for j in others]
    assert on_hand(client, "ODD") == {"L1": 100 - 2 * 11}
    moved = moves_per_sale()
    assert sales[5]["id"] not in moved
    assert all(moved[s["id"]] == 1 for i, s in enumerate(sales) if i != 5)
    # Failed for good once: a single task failure for it, none for the others.
    time.sleep(0.5)
    assert w.log().count("batch test hook rejected") >= 1
    assert_ledger_clean()


def test_duplicate_deliveries_have_one_effect_per_job(client, worker_factory):
    product(client, "DUP")
    receive(client, "DUP", "EARLY", 30, 10)
    receive(client, "DUP", "LATE", 100, 90)
    sales = [sale(client, f"S-DUP-{i}", [("DUP", 3)]) for i in range(30)]
    job_ids = [pay(client, s["id"])["id"] for s in sales]
    for job in Job.objects.filter(pk__in=job_ids):
        dispatch.enqueue(job)  # every job delivered three times
        dispatch.enqueue(job)

    worker_factory(JOB_BATCH_SIZE=BATCH)
    jobs = accepted_in_order(job_ids)
    assert all(j.status == "succeeded" for j in jobs), [(j.status, j.error_code) for j in jobs]
    assert on_hand(client, "DUP") == {"EARLY": 0, "LATE": 100 - (90 - 30)}
    moves = list(
        StockMove.objects.filter(kind="SALE_OUT", sale_line__product__sku="DUP").values_list(
            "job_id", "sale_line__sale_id", "quantity"
        )
    )
    job_of_sale = {j.sale_id: j.pk for j in jobs}
    assert all(job_of_sale[sid] == jid for jid, sid, _ in moves)
    per_sale = {}
    for _, sid, qty in moves:
        per_sale[sid] = per_sale.get(sid, 0) + qty
    assert per_sale == {s["id"]: -3 for s in sales}
    assert_ledger_clean()


def test_worker_killed_mid_batch_applies_every_job_once(client, worker_factory):
    """SIGKILL while a batch waits for its stock rows: nothing of it committed, every job
    is delivered again and applied exactly once."""
    product(client, "KILL")
    lot = receive(client, "KILL", "L1", 50, 30)
    sales = [sale(client, f"S-KILL-{i}", [("KILL", 2)]) for i in range(10)]
    lock = StockRowLock([lot["batch_id"]])
    try:
        job_ids = [pay(client, s["id"])["id"] for s in sales]
        w = worker_factory(JOB_BATCH_SIZE=BATCH)
        wait_until(lambda: lock_waiters() >= 1, 15, "a batch to block on the stock row")
        running = Job.objects.filter(pk__in=job_ids, status="running").count()
        assert running >= 1
        for pid in w.child_pids():
            os.kill(pid, signal.SIGKILL)
        wait_until(
            lambda: "SIGKILL" in w.log() or "WorkerLostError" in w.log(), 10, "the lost child"
        )
    finally:
        lock.release()
    jobs = accepted_in_order(job_ids)
    assert all(j.status == "succeeded" for j in jobs), [(j.status, j.error_code) for j in jobs]
    assert moves_per_sale() == {s["id"]: 1 for s in sales}
    assert on_hand(client, "KILL") == {"L1": 50 - 2 * 10}
    assert_ledger_clean()
