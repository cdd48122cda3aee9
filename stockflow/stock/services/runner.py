"""Running a job: claim it, apply its handler, record the outcome; `sale.paid` jobs
settled many per transaction (`_run_batch`); `fail` for the worker's give-up path.

Exactly-once *effect* under at-least-once delivery: a job's effects and its
`succeeded` status commit in one transaction that holds the job row lock.

Attempts count deliveries that run the job, nothing else. A delivery claims its job (one
autocommitted statement, so the count survives a worker that dies mid-job) only if no
other transaction holds the job row and no other delivery owns it: a `running` job
belongs to the delivery that claimed it (its retries and a broker redelivery after its
worker died resume it) until its lease runs out (then the reconciler re-sends it). Any
other delivery (a duplicate message, a re-send during a retry countdown) changes
nothing, waits for nothing and counts nothing.
"""

import datetime
import json
import time
from collections.abc import Callable
from typing import NamedTuple

import psycopg.errors
import structlog
from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from stockflow.platform import ids, sql
from stockflow.platform.errors import DomainError, ErrorCode
from stockflow.stock import events, locks, results

from ..models import Job
from .outbox import UNFINISHED_SQL, enqueue, lease

Handler = Callable[[Job], results.PaymentResult | results.RefundResult]
# Settles many locked jobs of one kind: {job id: result, DomainError, or unexpected exception}.
BatchHandler = Callable[[list[Job]], dict]

logger = structlog.get_logger(__name__)


_JOBS = Job._meta.db_table
# One autocommitted statement: claim the job (running, attempts + 1) if this delivery may
# run it; else say why not. `mine` is empty when another transaction holds the row;
# `free` is false while another delivery owns a running job: its claim (updated_at, which
# nothing but a claim moves while it runs; the reconciler renews only the lease) is younger
# than the running lease. A fresh delivery never waits (SKIP LOCKED); a resuming one waits
# (bounded by lock_timeout) for what holds the row: its own dead predecessor's transaction,
# about to end.
_CLAIM = f"""
    WITH mine AS (
        SELECT id, attempts < %(max_attempts)s AS fresh,
               status = '{Job.Status.QUEUED}' OR %(resuming)s
                 OR updated_at <= %(claimed_before)s AS free
        FROM {_JOBS} WHERE id = %(id)s AND status IN {UNFINISHED_SQL}
        FOR UPDATE {{skip_locked}}
    ), claimed AS (
        UPDATE {_JOBS}
        SET status = '{Job.Status.RUNNING}', attempts = attempts + 1,
            started_at = COALESCE(started_at, %(now)s), lease_expires_at = %(lease)s, updated_at = %(now)s
        WHERE id IN (SELECT id FROM mine WHERE fresh AND free)
        RETURNING kind, location_id
    )
    SELECT kind, location_id, 'claimed' FROM claimed
    UNION ALL
    SELECT j.kind, j.location_id, CASE WHEN m.fresh IS FALSE THEN 'exhausted' ELSE 'elsewhere' END
    FROM {_JOBS} j LEFT JOIN mine m ON m.id = j.id
    WHERE j.id = %(id)s AND j.status IN {UNFINISHED_SQL} AND NOT EXISTS (SELECT 1 FROM claimed)"""
_CLAIMS = {False: _CLAIM.format(skip_locked="SKIP LOCKED"), True: _CLAIM.format(skip_locked="")}


class Claim(NamedTuple):
    kind: str | None
    location_id: int | None
    claimed: bool


_NOTHING = Claim(None, None, False)


def _claim(job_id, resuming: bool = False) -> Claim:
    """Claim the job for this delivery: its kind and location, and whether it is ours to
    run. Nothing for a finished or unknown job, or one delivered too often (a poison
    message: failed here). resuming: this delivery continues the one that claimed it (a
    retry, a redelivery)."""
    job_uuid = ids.as_uuid(job_id)
    if job_uuid is None:
        return _NOTHING
    now = timezone.now()
    lease_age = datetime.timedelta(seconds=settings.JOB_RUNNING_LEASE_SECONDS)
    with connection.cursor() as cursor:
        cursor.execute(
            _CLAIMS[resuming],
            {
                "id": job_uuid,
                "now": now,
                "lease": lease(Job.Status.RUNNING, now),
                "claimed_before": now - lease_age,
                "max_attempts": settings.JOB_MAX_ATTEMPTS,
                "resuming": resuming,
            },
        )
        row = cursor.fetchone()
    if row is None:
        return _NOTHING
    kind, location_id, verdict = row
    if verdict == "exhausted":
        fail(job_uuid, ErrorCode.ERROR, f"gave up after {settings.JOB_MAX_ATTEMPTS} deliveries")
        return _NOTHING
    if verdict == "elsewhere":
        logger.debug("job.owned_elsewhere", job_id=str(job_uuid))
    return Claim(kind, location_id, verdict == "claimed")


_RESULT = Job._meta.get_field("result")  # its own JSON adaptation, as save() would use
_FINISH = f"""
    UPDATE {Job._meta.db_table}
    SET status = %s, result = %s, error_code = %s, error_message = %s, finished_at = %s, updated_at = %s
    WHERE id = %s"""


def _finish(job: Job, status: str, result: results.JobResult, message: str = "") -> None:
    """Record the end: `job.result` becomes the result's JSON, as stored."""
    job.status = status
    job.result = result.as_json()
    job.error_code = result.outcome if isinstance(result, results.Failure) else ""
    job.error_message = message
    job.finished_at = job.updated_at = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            _FINISH,
            [
                status,
                _RESULT.get_db_prep_save(job.result, connection),
                job.error_code,
                message,
                job.finished_at,
                job.updated_at,
                job.pk,
            ],
        )


def run(
    job_id,
    handlers: dict[str, Handler],
    batch_handlers: dict[str, BatchHandler] | None = None,
    is_transient: Callable[[BaseException], bool] = lambda exc: False,
    *,
    resuming: bool = False,
) -> Job | None:
    """Apply the job once. Business failures finish it as `failed`; transient database
    errors propagate (the caller retries); returns the job as it ended, or None if
    there was nothing to do (already finished, unknown id, owned by another delivery).

    resuming: this delivery continues the one that claimed the job (a retry of it, or
    the broker re-delivering it after its worker died), so it may take the job over.

    With `batch_handlers`, a job of a batched kind is settled together with up to
    JOB_BATCH_SIZE - 1 other queued jobs of that kind (see `_run_batch`)."""
    if batch_handlers and settings.JOB_BATCH_SIZE > 1:
        return _run_batch(job_id, handlers, batch_handlers, is_transient, resuming)
    return _apply(job_id, handlers) if _claim(job_id, resuming).claimed else None


def _apply(job_id, handlers: dict[str, Handler]) -> Job | None:
    """One claimed job, alone in its own transaction."""
    started = time.perf_counter()
    try:
        with transaction.atomic():
            job = locks.job(job_id)
            if job is None or job.is_terminal:  # a concurrent delivery finished it meanwhile
                return job
            result = handlers[job.kind](job)
            _finish(job, Job.Status.SUCCEEDED, result)
    except DomainError as exc:
        return fail(
            job_id,
            exc.code,
            exc.message,
            details=exc.details,
            duration_s=time.perf_counter() - started,
        )
    events.job_finished(job, time.perf_counter() - started, result)
    return job


# Inside the batch's transaction: lock our claimed job and up to N - 1 queued jobs of its
# kind (sharded: and its location, the jobs of this worker's queues), oldest first, never
# waiting (SKIP LOCKED), and count the others' attempt. Their claim commits with their
# outcome; if the worker dies they are simply queued again.
_LOCK_BATCH = f"""
    WITH mine AS (
        SELECT id FROM {_JOBS} WHERE id = %(own)s AND status IN {UNFINISHED_SQL}
        FOR UPDATE SKIP LOCKED
    ), others AS (
        SELECT id FROM {_JOBS}
        WHERE status = '{Job.Status.QUEUED}' AND kind = %(kind)s AND id IS DISTINCT FROM %(own)s
          AND attempts < %(max_attempts)s {{same_location}}
        ORDER BY created_at, id LIMIT %(others)s FOR UPDATE SKIP LOCKED
    )
    UPDATE {_JOBS} j
    SET status = '{Job.Status.RUNNING}',
        attempts = j.attempts + CASE WHEN j.id = %(own)s THEN 0 ELSE 1 END,
        started_at = COALESCE(j.started_at, %(now)s), lease_expires_at = %(lease)s, updated_at = %(now)s
    WHERE j.id IN (SELECT id FROM mine UNION ALL SELECT id FROM others)
    RETURNING {sql.columns(Job, "j")}"""
_LOCK_BATCHES = {
    False: _LOCK_BATCH.format(same_location=""),
    True: _LOCK_BATCH.format(same_location="AND location_id = %(location)s"),
}


def _run_batch(job_id, handlers, batch_handlers, is_transient, resuming) -> Job | None:
    """Our job plus up to JOB_BATCH_SIZE - 1 queued jobs of its kind in one transaction.
    Our job not ours to run (another batch or delivery has it): settle other queued jobs
    meanwhile, and leave ours to whoever has it."""
    job_uuid = ids.as_uuid(job_id)
    if job_uuid is None:
        return fail(job_id, ErrorCode.ERROR, "unknown job")
    claim = _claim(job_uuid, resuming)
    own = None
    if claim.kind in batch_handlers:
        own, own_left = _settle(claim, job_uuid, batch_handlers[claim.kind], handlers, is_transient)
        if own_left:  # left out of the batch: alone
            own = _apply(job_uuid, handlers)
    elif claim.claimed:  # a kind that is not batched (refunds): one per transaction
        own = _apply(job_uuid, handlers)
    return own


def _settle(claim: Claim, own_id, batch_handler, handlers, is_transient):
    """Settle one batch in one transaction. Returns (our job as it ended if the batch
    settled it, whether our job still needs settling alone). A transient error propagates
    (the whole batch rolls back and is retried); any other error of the transaction (one
    job's write failing a shared statement) settles every job alone instead, so only the
    job at fault fails."""
    started = time.perf_counter()
    own_claimed = claim.claimed
    jobs: list[Job] = []
    failed = None
    try:
        with transaction.atomic():
            now = timezone.now()
            jobs = sql.fetch(
                Job,
                _LOCK_BATCHES[settings.JOB_ROUTING != "single"],
                {
                    "own": own_id if own_claimed else None,
                    "kind": claim.kind,
                    "location": claim.location_id,
                    "now": now,
                    "lease": lease(Job.Status.RUNNING, now),
                    "max_attempts": settings.JOB_MAX_ATTEMPTS,
                    "others": settings.JOB_BATCH_SIZE - 1,
                },
            )
            jobs.sort(key=lambda j: (j.created_at, str(j.pk)))  # acceptance order
            done, left_out = _finish_batch(jobs, batch_handler(jobs) if jobs else {})
    except Exception as exc:
        if is_transient(exc):
            raise
        failed = exc
    own_missing = own_claimed and own_id not in {job.pk for job in jobs}
    if failed is not None:
        # Outside the except block: the job at fault raises its own error, unchained.
        logger.warning("job.batch_split", jobs=len(jobs), error=type(failed).__name__)
        return _apply_each(jobs, own_id, handlers, is_transient), own_missing
    if not jobs:
        return None, own_missing
    duration = time.perf_counter() - started
    events.batch_settled(len(jobs), duration)
    own = None
    for job, result in done:
        with _bound(job):
            events.job_finished(job, duration, result)
        own = job if job.pk == own_id else own
    others_left = [job for job, _ in left_out if job.pk != own_id]
    _release(others_left)  # its own delivery (or the reconciler) settles it alone
    for job, exc in left_out:
        if job.pk != own_id:
            with _bound(job):
                logger.warning("job.left_out_of_batch", error=type(exc).__name__)
    return own, own_missing or any(job.pk == own_id for job, _ in left_out)


def _apply_each(jobs: list[Job], own_id, handlers, is_transient) -> Job | None:
    """Every job of a failed batch alone, each in its own transaction; our job's own
    error propagates (it fails for good), another's leaves it to its own delivery."""
    own = None
    for job in jobs:
        with _bound(job):
            try:
                # The failed batch's claim rolled back: claim the others again, so their
                # attempts count.
                applied = (
                    _apply(job.pk, handlers) if job.pk == own_id or _claim(job.pk).claimed else None
                )
            except Exception as exc:
                if job.pk == own_id:
                    raise
                _release([job])  # its own delivery (or the reconciler) settles it
                if is_transient(exc):
                    raise
                logger.warning("job.left_out_of_batch", error=type(exc).__name__)
                continue
        own = applied if job.pk == own_id else own
    return own


_RELEASE = f"""
    UPDATE {_JOBS} SET status = '{Job.Status.QUEUED}', lease_expires_at = %(lease)s, updated_at = %(now)s
    WHERE id = ANY(%(ids)s) AND status = '{Job.Status.RUNNING}'"""


def _release(jobs: list[Job]) -> None:
    """Give back jobs this delivery claimed for a batch but did not settle: `queued`
    again (their attempt counted), and sent again: their own delivery may have come and
    gone while the batch held them (it found them owned elsewhere), and without a new
    message they would wait for the reconciler."""
    if not jobs:
        return
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            _RELEASE,
            {"ids": [job.pk for job in jobs], "lease": lease(Job.Status.QUEUED, now), "now": now},
        )
    transaction.on_commit(lambda: [enqueue(job) for job in jobs])


def _bound(job: Job):
    """Log a job's part of a batch under its own request id."""
    if not job.request_id:
        return structlog.contextvars.bound_contextvars(job_id=str(job.pk))
    return structlog.contextvars.bound_contextvars(
        request_id=job.request_id, job_id=str(job.pk), job_kind=job.kind
    )


_FINISH_MANY = f"""
    UPDATE {Job._meta.db_table} j
    SET status = d.status, result = d.result::jsonb, error_code = d.code, error_message = d.message,
        finished_at = d.at, updated_at = d.at
    FROM unnest(%(ids)s::uuid[], %(statuses)s::text[], %(results)s::text[], %(codes)s::text[],
                %(messages)s::text[], %(at)s::timestamptz[]) AS d(id, status, result, code, message, at)
    WHERE j.id = d.id"""


def _finish_batch(jobs: list[Job], outcomes: dict) -> tuple[list, list]:
    """Record every job's own outcome in one statement: ([(job, result)] finished,
    [(job, exception)] left out, still `running`)."""
    now = timezone.now()
    done, left_out = [], []
    for i, job in enumerate(jobs):
        outcome = outcomes[job.pk]
        if isinstance(outcome, DomainError):
            result = results.Failure(outcome.code, outcome.details)
            job.status, job.error_message = Job.Status.FAILED, outcome.message
        elif isinstance(outcome, Exception):
            left_out.append((job, outcome))
            continue
        else:
            result = outcome
            job.status, job.error_message = Job.Status.SUCCEEDED, ""
        job.result = result.as_json()
        job.error_code = result.outcome if isinstance(result, results.Failure) else ""
        # One microsecond apart: finish order stays the order the batch settled them in.
        job.finished_at = job.updated_at = now + datetime.timedelta(microseconds=i)
        done.append((job, result))
    if done:
        with connection.cursor() as cursor:
            cursor.execute(
                _FINISH_MANY,
                {
                    "at": [job.finished_at for job, _ in done],
                    "ids": [job.pk for job, _ in done],
                    "statuses": [str(job.status) for job, _ in done],
                    "results": [
                        None if job.result is None else json.dumps(job.result) for job, _ in done
                    ],
                    "codes": [str(job.error_code) for job, _ in done],
                    "messages": [job.error_message for job, _ in done],
                },
            )
    return done, left_out


# Long enough for a just-closed connection's backend to end (client_connection_check_interval
# is 1 s); short enough that recording a failure never stalls a worker.
_FAIL_LOCK_TIMEOUT_MS = 2000


def fail(
    job_id, code: ErrorCode, message: str, details=None, duration_s: float | None = None
) -> Job | None:
    """Finish a job as failed (unless a concurrent delivery already finished it). Waits
    for the job row only briefly: whoever holds it longer settles the job, or, if that
    is a dead worker's transaction, the reconciler re-sends the job once its lease runs
    out."""
    try:
        with transaction.atomic():
            job = locks.job(job_id, lock_timeout_ms=_FAIL_LOCK_TIMEOUT_MS)
            if job is None or job.is_terminal:
                return job
            _finish(job, Job.Status.FAILED, results.Failure(code, details), message)
    except OperationalError as exc:
        if not isinstance(exc.__cause__, psycopg.errors.LockNotAvailable):
            raise
        logger.warning("job.left_for_reconciler", job_id=str(job_id), reason="job_locked")
        return None
    events.job_finished(job, duration_s)
    return job
