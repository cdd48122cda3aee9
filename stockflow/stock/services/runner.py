"""Running a job: claim it, apply its handler, record the outcome; `sale.paid` jobs
settled many per transaction (`_run_batch`); `fail` for the worker's give-up path.

Exactly-once *effect* under at-least-once delivery: a job's effects and its
`succeeded` status commit in one transaction that holds the job row lock, so a
second delivery waits for the first (or skips it, in a batch) and then finds the job
terminal.
"""

import datetime
import json
import time
from collections.abc import Callable

import structlog
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from stockflow.platform import ids, sql
from stockflow.platform.errors import DomainError, ErrorCode
from stockflow.stock import events, locks, results

from ..models import Job
from .outbox import _UNFINISHED, _lease

Handler = Callable[[Job], results.PaymentResult | results.RefundResult]
# Settles many locked jobs of one kind: {job id: result, DomainError, or unexpected exception}.
BatchHandler = Callable[[list[Job]], dict]

logger = structlog.get_logger(__name__)


_CLAIM = f"""
    UPDATE {Job._meta.db_table}
    SET status = '{Job.Status.RUNNING}', attempts = attempts + 1, started_at = COALESCE(started_at, %(now)s),
        lease_expires_at = %(lease)s, updated_at = %(now)s
    WHERE id = %(id)s AND status IN {_UNFINISHED} AND attempts < %(max_attempts)s"""


def _claim(job_id) -> bool:
    """Mark the job running and count the attempt in one autocommitted statement, so
    attempts survive a worker that dies mid-job. False if there is nothing to do."""
    now = timezone.now()
    job_uuid = ids.as_uuid(job_id)
    claimed = 0
    if job_uuid is not None:
        with connection.cursor() as cursor:
            cursor.execute(
                _CLAIM,
                {
                    "id": job_uuid,
                    "now": now,
                    "lease": _lease(Job.Status.RUNNING, now),
                    "max_attempts": settings.JOB_MAX_ATTEMPTS,
                },
            )
            claimed = cursor.rowcount
    if not claimed:
        # Finished already, unknown, or delivered too often (a poison message): fail() sorts it out.
        fail(job_id, ErrorCode.ERROR, f"gave up after {settings.JOB_MAX_ATTEMPTS} deliveries")
    return bool(claimed)


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
) -> Job | None:
    """Apply the job once. Business failures finish it as `failed`; transient database
    errors propagate (the caller retries); returns the job as it ended, or None if
    there was nothing to do (already finished, unknown id).

    With `batch_handlers`, a job of a batched kind is settled together with up to
    JOB_BATCH_SIZE - 1 other queued jobs of that kind (see `_run_batch`)."""
    if batch_handlers and settings.JOB_BATCH_SIZE > 1:
        return _run_batch(job_id, handlers, batch_handlers, is_transient)
    if not _claim(job_id):
        return None
    return _apply(job_id, handlers)


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


_JOBS = Job._meta.db_table
_CLAIM_OWN = f"""
    WITH mine AS (
        SELECT id FROM {_JOBS}
        WHERE id = %(id)s AND status IN {_UNFINISHED} AND attempts < %(max_attempts)s
        FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE {_JOBS}
        SET status = '{Job.Status.RUNNING}', attempts = attempts + 1,
            started_at = COALESCE(started_at, %(now)s), lease_expires_at = %(lease)s, updated_at = %(now)s
        WHERE id IN (SELECT id FROM mine)
        RETURNING kind
    )
    SELECT kind, true FROM claimed
    UNION ALL
    SELECT kind, false FROM {_JOBS}
    WHERE id = %(id)s AND status IN {_UNFINISHED} AND NOT EXISTS (SELECT 1 FROM claimed)"""

# Inside the batch's transaction: lock our claimed job and up to N - 1 queued jobs of its
# kind, oldest first, never waiting (SKIP LOCKED), and count the others' attempt. Their
# claim commits with their outcome; if the worker dies they are simply queued again.
_LOCK_BATCH = f"""
    WITH mine AS (
        SELECT id FROM {_JOBS} WHERE id = %(own)s AND status IN {_UNFINISHED}
        FOR UPDATE SKIP LOCKED
    ), others AS (
        SELECT id FROM {_JOBS}
        WHERE status = '{Job.Status.QUEUED}' AND kind = %(kind)s AND id IS DISTINCT FROM %(own)s
          AND attempts < %(max_attempts)s
        ORDER BY created_at, id LIMIT %(others)s FOR UPDATE SKIP LOCKED
    )
    UPDATE {_JOBS} j
    SET status = '{Job.Status.RUNNING}',
        attempts = j.attempts + CASE WHEN j.id = %(own)s THEN 0 ELSE 1 END,
        started_at = COALESCE(j.started_at, %(now)s), lease_expires_at = %(lease)s, updated_at = %(now)s
    WHERE j.id IN (SELECT id FROM mine UNION ALL SELECT id FROM others)
    RETURNING {sql.columns(Job, "j")}"""


def _claim_own(job_uuid) -> tuple[str | None, bool, bool]:
    """Claim this job unless another transaction holds it: one autocommitted statement, so
    attempts survive a dead worker. Returns (its kind, claimed, held elsewhere); (None,
    False, False) for a finished or unknown job: a delivery of a job a batch settled costs
    this one statement."""
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            _CLAIM_OWN,
            {
                "id": job_uuid,
                "now": now,
                "lease": _lease(Job.Status.RUNNING, now),
                "max_attempts": settings.JOB_MAX_ATTEMPTS,
            },
        )
        row = cursor.fetchone()
    return (row[0], row[1], not row[1]) if row else (None, False, False)


def _run_batch(job_id, handlers, batch_handlers, is_transient) -> Job | None:
    """Our job plus up to JOB_BATCH_SIZE - 1 queued jobs of its kind in one transaction.
    Our job held by another transaction (another batch has it): settle other queued jobs
    meanwhile, then wait for it as a single delivery would."""
    job_uuid = ids.as_uuid(job_id)
    if job_uuid is None:
        return fail(job_id, ErrorCode.ERROR, "unknown job")
    kind, claimed, held_elsewhere = _claim_own(job_uuid)
    own = None
    if kind in batch_handlers:
        own, own_left = _settle(
            kind, job_uuid, claimed, batch_handlers[kind], handlers, is_transient
        )
        if own_left:  # left out of the batch (or taken by a duplicate delivery): alone
            own = _apply(job_uuid, handlers)
    elif claimed:  # a kind that is not batched (refunds): one per transaction
        own = _apply(job_uuid, handlers)
    if held_elsewhere:
        # Wait for whoever holds it, then apply it alone if still unfinished; fail it if it
        # was delivered too often.
        own = _apply(job_uuid, handlers) if _claim(job_uuid) else None
    return own


def _settle(kind, own_id, own_claimed, batch_handler, handlers, is_transient):
    """Settle one batch in one transaction. Returns (our job as it ended if the batch
    settled it, whether our job still needs settling alone). A transient error propagates
    (the whole batch rolls back and is retried); any other error of the transaction (one
    job's write failing a shared statement) settles every job alone instead, so only the
    job at fault fails."""
    started = time.perf_counter()
    jobs: list[Job] = []
    failed = None
    try:
        with transaction.atomic():
            now = timezone.now()
            jobs = sql.fetch(
                Job,
                _LOCK_BATCH,
                {
                    "own": own_id if own_claimed else None,
                    "kind": kind,
                    "now": now,
                    "lease": _lease(Job.Status.RUNNING, now),
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
    for job, exc in left_out:
        if job.pk != own_id:
            # Still `running`: its own delivery (or the reconciler) settles it alone.
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
                applied = _apply(job.pk, handlers) if job.pk == own_id or _claim(job.pk) else None
            except Exception as exc:
                if is_transient(exc) or job.pk == own_id:
                    raise
                logger.warning("job.left_out_of_batch", error=type(exc).__name__)
                continue
        own = applied if job.pk == own_id else own
    return own


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


def fail(
    job_id, code: ErrorCode, message: str, details=None, duration_s: float | None = None
) -> Job | None:
    """Finish a job as failed (unless a concurrent delivery already finished it)."""
    with transaction.atomic():
        job = locks.job(job_id)
        if job is None or job.is_terminal:
            return job
        _finish(job, Job.Status.FAILED, results.Failure(code, details), message)
    events.job_finished(job, duration_s)
    return job
