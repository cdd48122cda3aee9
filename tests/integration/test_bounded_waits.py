"""Bounded waits (P8 #1-#3): a row held elsewhere costs a web request a 503 `busy` within
the web's lock timeout, and a job a retried `lock_timeout` within the worker's; a job
killed at its hard time limit leaves the worker's main process responsive."""

import contextlib
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from django.db import connection

from harness import client as api
from harness.client import Client
from stockflow.accounts.models import AuditEntry
from stockflow.stock.models import Job, Sale, StockOnHand
from stockflow.stock.services import outbox
from tests import faults
from tests.api_helpers import ok, pay, product, receive, sale, wait_for_job, wait_until
from tests.conftest import WebProcess
from workers.celery import app

SALES = Sale._meta.db_table


@contextlib.contextmanager
def held(statement: str, params: list):
    """Rows locked FOR UPDATE by another PostgreSQL session until the block ends."""
    with faults.lock_holder() as holder:
        holder.execute(statement, params).fetchall()
        try:
            yield
        finally:
            holder.rollback()


def draft_sale(client, sku: str, number: str) -> dict:
    product(client, sku)
    receive(client, sku, "L1", 5, 30)
    return sale(client, number, [(sku, 1)])


def test_paid_on_a_held_sale_answers_503_busy_at_once_then_202_with_the_same_key(client):
    s = draft_sale(client, "BW-HELD", "S-BW-HELD")
    audited = AuditEntry.objects.count()
    body, headers = {"to_status": "paid"}, {"Idempotency-Key": "bw-held-1"}
    url = f"/api/sales/{s['id']}/transition"
    with held(f"SELECT 1 FROM {SALES} WHERE id = %s FOR UPDATE", [s["id"]]):
        started = time.monotonic()
        refused = client.post(url, json=body, headers=headers, timeout=10)
        elapsed = time.monotonic() - started
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "busy"
    assert int(refused.headers["Retry-After"]) >= 1
    assert elapsed < 3, f"answered after {elapsed:.1f}s: the wait is not bounded"
    assert not Job.objects.filter(sale_id=s["id"]).exists()  # nothing written
    assert AuditEntry.objects.count() == audited
    assert Sale.objects.get(pk=s["id"]).status == "draft"

    accepted = ok(client.post(url, json=body, headers=headers), 202)["job"]
    again = ok(client.post(url, json=body, headers=headers), 202)["job"]
    assert again["id"] == accepted["id"]


def test_requests_waiting_on_a_held_sale_leave_healthz_and_other_reads_answering(tmp_path, token):
    """gunicorn with one process of 4 threads: 10 requests on a held row must not take
    every thread until the row is released."""
    web = WebProcess(tmp_path, "busy", WEB_CONCURRENCY="1", WEB_THREADS="4")
    try:
        with Client(web.url, token, timeout=30) as c:
            s = draft_sale(c, "BW-TEN", "S-BW-TEN")
            other = sale(c, "S-BW-OTHER", [("BW-TEN", 1)])
            with (
                held(f"SELECT 1 FROM {SALES} WHERE id = %s FOR UPDATE", [s["id"]]),
                ThreadPoolExecutor(10) as pool,
            ):
                waiting = [pool.submit(api.pay, c, s["id"], f"bw-ten-{i}") for i in range(10)]
                time.sleep(0.3)  # all 10 sent: every thread is taken by one of them
                started = time.monotonic()
                health = c.get("/healthz", timeout=8)
                read = c.get(f"/api/sales/{other['id']}", timeout=8)
                elapsed = time.monotonic() - started
                answers = [f.result(timeout=20) for f in waiting]
    finally:
        web.stop()
    assert health.status_code == 200 and read.status_code == 200, (health.text, read.text)
    assert elapsed < 8
    assert [(r.status_code, r.json()["error"]["code"]) for r in answers] == [(503, "busy")] * 10


def test_a_job_waiting_on_stock_past_the_worker_lock_timeout_retries_and_succeeds(
    client, worker_factory
):
    """The stock row is held longer than the task's soft time limit: the wait must end at
    the worker's lock timeout and be retried, not fail the job for good."""
    w = worker_factory(
        WORKER_DB_LOCK_TIMEOUT_MS=1000,
        CELERY_TASK_SOFT_TIME_LIMIT=3,
        CELERY_TASK_TIME_LIMIT=8,
        JOB_RETRY_BACKOFF_MAX_SECONDS=1,
        JOB_MAX_RETRIES=10,
    )
    product(client, "BW-STOCK")
    lot = receive(client, "BW-STOCK", "L1", 5, 30)
    s = sale(client, "S-BW-STOCK", [("BW-STOCK", 1)])
    on_hand = StockOnHand._meta.db_table
    with held(f"SELECT 1 FROM {on_hand} WHERE batch_id = %s FOR UPDATE", [lot["batch_id"]]):
        job = pay(client, s["id"])
        time.sleep(4.5)  # past the soft time limit
        row = Job.objects.get(pk=job["id"])
        assert not row.is_terminal, (row.status, row.error_code, row.error_message)
    done = wait_for_job(client, job["id"], timeout=30)
    assert done["status"] == "succeeded", done
    assert done["attempts"] >= 2, done  # refused at the lock timeout, retried
    log = w.log()
    assert "lock_timeout" in log
    assert "SoftTimeLimitExceeded" not in log


HANG = """
    CREATE OR REPLACE FUNCTION bw_hang_paid() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NEW.status = 'paid' AND NEW.number = %s THEN PERFORM pg_sleep(%s); END IF;
      RETURN NEW;
    END $$;
"""


@contextlib.contextmanager
def hanging_paid(number: str, seconds: int):
    """A trigger that makes one sale's UPDATE to `paid` sleep: a job stuck in the database."""
    with connection.cursor() as cur:
        cur.execute(HANG, [number, seconds])
        cur.execute(
            f"DROP TRIGGER IF EXISTS bw_hang_paid ON {SALES};"
            f" CREATE TRIGGER bw_hang_paid BEFORE UPDATE ON {SALES}"
            " FOR EACH ROW EXECUTE FUNCTION bw_hang_paid()"
        )
    try:
        yield lambda: _stop_hanging(number)
    finally:
        with connection.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event = 'PgSleep'"
            )
            cur.execute(
                f"DROP TRIGGER IF EXISTS bw_hang_paid ON {SALES}; DROP FUNCTION IF EXISTS bw_hang_paid()"
            )


def _stop_hanging(number: str):
    # Replacing the function takes no lock on the table (dropping the trigger would wait
    # for the stuck transaction).
    with connection.cursor() as cur:
        cur.execute(HANG, [number, 0])


def test_a_job_killed_at_the_hard_time_limit_leaves_the_main_process_responsive(
    client, worker_factory
):
    w = worker_factory(
        CELERY_TASK_TIME_LIMIT=3,
        CELERY_TASK_SOFT_TIME_LIMIT=0,  # no soft limit: the hard one kills the child
        WORKER_DB_STATEMENT_TIMEOUT_MS=60000,
    )
    hostname = f"{w.name}@{socket.gethostname()}"
    s = draft_sale(client, "BW-HANG", "S-BW-HANG")
    with hanging_paid("S-BW-HANG", 20) as stop_hanging:
        job = pay(client, s["id"])
        wait_until(lambda: "Hard time limit" in w.log(), 15, "the hard time limit")
        stop_hanging()
        killed_at = time.monotonic()
        # The main process answers a ping at once: it is not waiting for the dead child's rows.
        replies = app.control.ping(destination=[hostname], timeout=3)
        assert replies and time.monotonic() - killed_at < 5, (replies, w.log()[-3000:])
        assert any(
            "job.left_for_reconciler" in line and '"time_limit"' in line
            for line in w.log().splitlines()
        ), w.log()[-3000:]
        row = Job.objects.get(pk=job["id"])
        assert row.status == "running" and row.attempts == 1, (row.status, row.attempts)
        # The reconciler re-sends it once its lease runs out; the dead child's
        # transaction is gone by then, so the second attempt goes through.
        wait_until(
            lambda: Job.objects.get(pk=job["id"]).lease_expires_at.timestamp() < time.time(),
            15,
            "the running lease to run out",
        )
        assert outbox.reconcile() >= 1
        done = wait_for_job(client, job["id"], timeout=20)
    assert done["status"] == "succeeded" and done["attempts"] == 2, done
