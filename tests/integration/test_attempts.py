"""Attempts count deliveries that run the job (P8 #5): duplicate messages of a job another
delivery owns, sent while it runs or while its retry countdown runs, change nothing,
wait for nothing and count nothing."""

import re
import time

from stockflow.stock.models import Job, StockMove, StockOnHand
from tests import faults
from tests.api_helpers import on_hand, pay, product, receive, sale, wait_for_job, wait_until
from workers import publish as dispatch

SUCCEEDED = re.compile(r"stockflow\.run_job\[[^\]]+\] succeeded|\"event\":\s*\"task_succeeded\"")


class StockHold:
    """FOR UPDATE on a batch's on-hand row from another session: a job reaching it waits."""

    def __init__(self, batch_id):
        self.conn = faults.lock_holder()
        self.conn.execute(
            f"SELECT 1 FROM {StockOnHand._meta.db_table} WHERE batch_id = %s FOR UPDATE",
            [batch_id],
        ).fetchall()

    def release(self):
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()


def setup(client, sku: str) -> tuple[dict, dict]:
    product(client, sku)
    lot = receive(client, sku, "L1", 10, 30)
    return lot, sale(client, f"S-{sku}", [(sku, 2)])


def test_resends_during_a_retry_countdown_neither_run_nor_count(client, worker_factory, settings):
    """The first delivery meets a held stock row, times out and waits for its retry; more
    re-sends of the job than JOB_MAX_ATTEMPTS arrive meanwhile. Only the first delivery's
    own runs count: the job succeeds once the row is free."""
    w = worker_factory(
        PGOPTIONS="-c lock_timeout=300",  # (also before WORKER_DB_LOCK_TIMEOUT_MS existed)
        JOB_RETRY_BACKOFF_MAX_SECONDS=1,
        JOB_MAX_RETRIES=20,
    )
    lot, s = setup(client, "ATT-COUNTDOWN")
    hold = StockHold(lot["batch_id"])
    try:
        job = pay(client, s["id"])
        wait_until(lambda: "lock_timeout" in w.log(), 15, "the first delivery to time out")
        for _ in range(settings.JOB_MAX_ATTEMPTS + 2):
            dispatch.enqueue(Job.objects.get(pk=job["id"]))
        time.sleep(3)  # the re-sends are delivered while the row is still held
    finally:
        hold.release()
    done = wait_for_job(client, job["id"], timeout=30)
    assert done["status"] == "succeeded", done
    # The first delivery and its retries only (~0.8 s apart while the row was held): the
    # re-sends alone would have made more than JOB_MAX_ATTEMPTS.
    assert done["attempts"] < settings.JOB_MAX_ATTEMPTS, done
    assert on_hand(client, "ATT-COUNTDOWN") == {"L1": 8}
    assert StockMove.objects.filter(kind="SALE_OUT", job_id=job["id"]).count() == 1


def test_a_duplicate_of_a_job_being_run_neither_waits_nor_counts(client, worker_factory):
    """While one delivery runs the job (waiting for a stock row inside its transaction), a
    duplicate finishes at once, without waiting for the job row, and counts nothing."""
    w = worker_factory(WORKER_DB_LOCK_TIMEOUT_MS=20000)
    lot, s = setup(client, "ATT-DUP")
    hold = StockHold(lot["batch_id"])
    try:
        job = pay(client, s["id"])
        wait_until(
            lambda: Job.objects.get(pk=job["id"]).status == "running", 15, "the job to be claimed"
        )
        time.sleep(0.3)  # in its transaction, waiting for the stock row
        done_before = len(SUCCEEDED.findall(w.log()))
        dispatch.enqueue(Job.objects.get(pk=job["id"]))
        wait_until(
            lambda: len(SUCCEEDED.findall(w.log())) > done_before,
            5,
            "the duplicate to finish while the first delivery still runs",
        )
        row = Job.objects.get(pk=job["id"])
        assert (row.status, row.attempts) == ("running", 1)
    finally:
        hold.release()
    done = wait_for_job(client, job["id"], timeout=30)
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    assert StockMove.objects.filter(kind="SALE_OUT", job_id=job["id"]).count() == 1
