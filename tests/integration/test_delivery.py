"""At-least-once delivery, exactly-once effect: duplicate messages, a worker killed with
SIGKILL in the middle of a job, and a broker that lost the message."""

import io
import os
import re
import signal
import time

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from stockflow.stock.models import Job, StockMove, StockOnHand
from stockflow.stock.services import outbox as job_services
from tests import faults
from tests.api_helpers import (
    ok,
    on_hand,
    pay,
    pay_and_wait,
    product,
    receive,
    sale,
    wait_for_job,
    wait_until,
)
from workers import publish as dispatch

RUN_JOB_SUCCEEDED = re.compile(r"stockflow\.run_job\[[^\]]+\] succeeded")
TASK_SUCCEEDED_EVENT = re.compile(r'"event":\s*"task_succeeded"')


def deliveries_done(worker) -> int:
    """How many run_job deliveries the worker finished: Celery's own "Task ... succeeded"
    line per task (or the structured task_succeeded event, whichever the log carries)."""
    log = worker.log()
    return max(len(RUN_JOB_SUCCEEDED.findall(log)), len(TASK_SUCCEEDED_EVENT.findall(log)))


@pytest.fixture
def worker(module_worker):
    return module_worker


def lock_waiters() -> int:
    """Backends of the test database waiting for a row lock right now."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cur.fetchone()[0]


class StockRowLock:
    """Holds FOR UPDATE on on-hand rows from a separate PostgreSQL session, so a worker that
    reaches them waits, in the middle of its job (after the claim committed)."""

    def __init__(self, batch_ids):
        s = connection.settings_dict
        self.conn = psycopg.connect(
            dbname=s["NAME"],
            user=s["USER"] or None,
            password=s["PASSWORD"] or None,
            host=s["HOST"] or None,
            port=s["PORT"] or None,
        )
        self.conn.execute(
            f"SELECT quantity FROM {StockOnHand._meta.db_table} WHERE batch_id = ANY(%s) FOR UPDATE",
            [list(batch_ids)],
        ).fetchall()

    def release(self):
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()


def effect(sale_id: int) -> dict:
    """Everything one sale.paid job may write."""
    return {
        "moves": list(
            StockMove.objects.filter(sale_line__sale_id=sale_id)
            .order_by("id")
            .values_list("id", "kind", "batch_id", "quantity", "job_id")
        ),
        "on_hand": dict(StockOnHand.objects.values_list("batch_id", "quantity")),
        "all_moves": StockMove.objects.count(),
    }


def job_row(job_id) -> dict:
    j = Job.objects.get(pk=job_id)
    return {
        "status": j.status,
        "attempts": j.attempts,
        "result": j.result,
        "error_code": j.error_code,
        "finished_at": j.finished_at,
        "started_at": j.started_at,
    }


def ledger_clean():
    call_command("check_ledger", stdout=io.StringIO())


def setup_sale(client, number="S-D", qty=3) -> dict:
    product(client, "DLV")
    first = receive(client, "DLV", "EARLY", 2, 10)
    second = receive(client, "DLV", "LATE", 10, 20)
    s = sale(client, number, [("DLV", qty)])
    return {"sale": s, "batches": [first["batch_id"], second["batch_id"]]}


def test_redelivering_a_succeeded_job_changes_nothing(client, worker):
    base = deliveries_done(worker)
    s = setup_sale(client)["sale"]
    job = pay_and_wait(client, s["id"])
    assert job["status"] == "succeeded", job
    wait_until(lambda: deliveries_done(worker) >= base + 1, 10, "the first delivery to be logged")
    before, row_before, api_before = (
        effect(s["id"]),
        job_row(job["id"]),
        ok(client.get(f"/api/jobs/{job['id']}"), 200),
    )
    assert len(before["moves"]) == 2

    dispatch.enqueue(Job.objects.get(pk=job["id"]))  # the broker delivers it again
    dispatch.enqueue(Job.objects.get(pk=job["id"]))  # ... and again
    wait_until(
        lambda: deliveries_done(worker) >= base + 3, 15, "the duplicate deliveries to be processed"
    )

    assert effect(s["id"]) == before
    assert job_row(job["id"]) == row_before
    assert ok(client.get(f"/api/jobs/{job['id']}"), 200) == api_before
    assert on_hand(client, "DLV") == {"EARLY": 0, "LATE": 9}
    ledger_clean()


def test_two_deliveries_at_once_apply_the_job_once(client, worker):
    """Two messages for one job reach both pool processes together: one applies it; the
    other finds it owned by the first delivery and ends at once, without waiting on the
    job row and without counting an attempt."""
    base = deliveries_done(worker)
    made = setup_sale(client)
    lock = StockRowLock(made["batches"])
    try:
        job = pay(client, made["sale"]["id"])
        # The first delivery waits for the stock rows inside its job transaction.
        wait_until(lambda: lock_waiters() >= 1, 15, "the first delivery to be blocked")
        dispatch.enqueue(Job.objects.get(pk=job["id"]))  # a duplicate while the first is in flight
        wait_until(lambda: deliveries_done(worker) >= base + 1, 15, "the duplicate to finish")
        assert lock_waiters() == 1, "the duplicate does not wait on the job row"
        assert Job.objects.get(pk=job["id"]).status == "running"
    finally:
        lock.release()

    done = wait_for_job(client, job["id"])
    wait_until(lambda: deliveries_done(worker) >= base + 2, 15, "both deliveries to finish")
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1, (
        "the second delivery must not count as an attempt of a finished job"
    )
    moves = effect(made["sale"]["id"])["moves"]
    assert sorted((kind, qty) for _, kind, _, qty, _ in moves) == [
        ("SALE_OUT", -2),
        ("SALE_OUT", -1),
    ]
    assert on_hand(client, "DLV") == {"EARLY": 0, "LATE": 9}
    ledger_clean()


def test_worker_killed_mid_job_is_redelivered_and_applied_once(client, worker):
    made = setup_sale(client)
    sid = made["sale"]["id"]
    lock = StockRowLock(made["batches"])
    try:
        job = pay(client, sid)
        # The claim committed (running, attempt 1); the job transaction waits on our lock.
        wait_until(
            lambda: Job.objects.get(pk=job["id"]).status == "running", 15, "the job to be claimed"
        )
        wait_until(lambda: lock_waiters() >= 1, 15, "the worker to block on the stock rows")
        log_before = len(worker.log())
        children = worker.child_pids()
        assert children, worker.log()
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        wait_until(
            lambda: (
                "SIGKILL" in worker.log()[log_before:]
                or "WorkerLostError" in worker.log()[log_before:]
            ),
            10,
            "the worker to notice its lost child",
        )
    finally:
        lock.release()
    assert Job.objects.get(pk=job["id"]).status == "running"

    # Redelivery: reject_on_worker_lost requeues the message at once; if it did not, the
    # reconciler re-sends the job when its running lease (10 s in tests) runs out.
    try:
        wait_until(
            lambda: Job.objects.get(pk=job["id"]).is_terminal, 5, "redelivery via the broker"
        )
    except AssertionError:
        lease = Job.objects.get(pk=job["id"]).lease_expires_at
        time.sleep(max(0.0, (lease - timezone.now()).total_seconds()) + 0.2)
        assert job_services.reconcile() >= 1
    done = wait_for_job(client, job["id"], timeout=20)

    assert done["status"] == "succeeded", done
    assert done["attempts"] >= 2, done
    assert done["result"]["outcome"] == "success"
    moves = effect(sid)["moves"]
    assert sorted((kind, qty, str(job_id)) for _, kind, _, qty, job_id in moves) == [
        ("SALE_OUT", -2, job["id"]),
        ("SALE_OUT", -1, job["id"]),
    ]
    assert on_hand(client, "DLV") == {"EARLY": 0, "LATE": 9}
    assert ok(client.get(f"/api/sales/{sid}"), 200)["status"] == "paid"
    ledger_clean()


def test_lost_broker_message_is_recovered_by_the_reconciler(client, broker, shared_worker):
    """The job row is the truth: a queued job whose message vanished is re-sent once its
    queued lease (5 s in tests) runs out, and then applied exactly once."""
    shared_worker.stop()
    made = setup_sale(client)
    job = pay(client, made["sale"]["id"])  # no worker: the message waits in the broker
    assert faults.queued_messages() >= 1
    faults.lose_queued_messages()  # ... and the broker loses it

    w = shared_worker.get()
    time.sleep(1.0)
    row = Job.objects.get(pk=job["id"])
    assert row.status == "queued" and row.attempts == 0, (
        "nothing should have delivered the lost job"
    )
    assert deliveries_done(w) == 0
    if (
        row.lease_expires_at - timezone.now()
    ).total_seconds() > 0.5:  # (a slow worker start may have used it up)
        assert job_services.reconcile() == 0, (
            "the queued lease has not run out yet: nothing to re-send"
        )

    time.sleep(max(0.0, (row.lease_expires_at - timezone.now()).total_seconds()) + 0.2)
    assert job_services.reconcile() == 1
    done = wait_for_job(client, job["id"], timeout=20)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1
    assert on_hand(client, "DLV") == {"EARLY": 0, "LATE": 9}
    assert len(effect(made["sale"]["id"])["moves"]) == 2
    # Once finished, the reconciler leaves it alone.
    assert job_services.reconcile() == 0
    ledger_clean()


def test_a_poison_job_delivered_too_often_fails_for_good_instead_of_looping(
    client, broker, shared_worker, transactional_db, settings
):
    """A poison message (one that keeps killing its worker) must end: past JOB_MAX_ATTEMPTS
    deliveries the job fails with `error` and nothing is written."""
    product(client, "POISON")
    receive(client, "POISON", "L1", 5, 30)
    s = sale(client, "S-POISON", [("POISON", 1)])
    shared_worker.stop()  # no worker while we rewrite history
    job = pay(client, s["id"])
    faults.lose_queued_messages()
    Job.objects.filter(pk=job["id"]).update(attempts=settings.JOB_MAX_ATTEMPTS, status="running")
    dispatch.enqueue(Job.objects.get(pk=job["id"]))
    shared_worker.get()
    done = wait_for_job(client, job["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "error"
    assert "gave up" in done["error"]["message"]
    assert done["attempts"] == settings.JOB_MAX_ATTEMPTS
    assert not StockMove.objects.filter(kind="SALE_OUT").exists()
