"""The job lifecycle: accept (`earlier` decides a repeated request, else `create` writes
the outbox row), run (claim, apply, record), fail, reconcile.

The requesting services (payment, refund) lock the sale and apply their own business
check between `earlier` and `create`.

Exactly-once *effect* under at-least-once delivery: a job's effects and its
`succeeded` status commit in one transaction that holds the job row lock, so a
second delivery waits for the first and then finds the job terminal.
"""

import datetime
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from stockflow.platform import ids, sql
from stockflow.platform.errors import DomainError, ErrorCode
from stockflow.stock import events, locks, results

from ..models import Job, Sale

Handler = Callable[[Job], results.PaymentResult | results.RefundResult]


def enqueue(job: Job) -> bool:
    """Hand a committed job to the broker through `settings.JOB_PUBLISHER` (the Celery
    side lives in workers/, outside the domain). False if the broker refused it: the
    reconciler re-sends it when its lease runs out."""
    return import_string(settings.JOB_PUBLISHER)(job)


def fingerprint(kind: str, payload: dict) -> str:
    canonical = json.dumps(
        {"kind": kind, "payload": payload}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _lease(status: str, now: datetime.datetime) -> datetime.datetime:
    seconds = (
        settings.JOB_QUEUED_LEASE_SECONDS
        if status == Job.Status.QUEUED
        else settings.JOB_RUNNING_LEASE_SECONDS
    )
    return now + datetime.timedelta(seconds=seconds)


@dataclass(frozen=True)
class JobRequest:
    """A request that becomes a job unless an earlier job already decides it."""

    kind: Job.Kind
    payload: dict
    idempotency_key: str | None
    request_id: str

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint(self.kind, self.payload)


def earlier(sale: Sale, request: JobRequest) -> Job | None:
    """The earlier job that decides this request, if any: the one holding its
    Idempotency-Key (another body -> IDEMPOTENCY_CONFLICT), else for `paid` one still in
    flight. Call it with the sale locked, so requests for one sale are decided one at a
    time."""
    key = request.idempotency_key or None
    # One query for both earlier jobs that decide this request.
    found = sql.fetch(
        Job,
        _EARLIER,
        {
            "sale": sale.pk,
            "kind": request.kind,
            "key": key,
            "one_at_a_time": request.kind == Job.Kind.SALE_PAID,
        },
    )
    same_key = next((j for j in found if key and j.idempotency_key == key), None)
    if same_key is not None:
        if same_key.fingerprint != request.fingerprint:
            events.idempotency_conflict(sale.pk, request.kind, key, same_key.pk)
            raise DomainError(
                ErrorCode.IDEMPOTENCY_CONFLICT,
                "this Idempotency-Key was already used with a different request body",
            )
        return same_key
    return found[0] if found else None  # a PAID job in flight for this sale


def create(sale: Sale, request: JobRequest) -> Job:
    """Write the job row and enqueue it when the surrounding transaction commits."""
    now = timezone.now()
    job = sql.insert(
        Job(
            kind=request.kind,
            sale=sale,
            payload=request.payload,
            idempotency_key=request.idempotency_key or None,
            fingerprint=request.fingerprint,
            request_id=request.request_id,
            created_at=now,
            lease_expires_at=_lease(Job.Status.QUEUED, now),
        )
    )
    transaction.on_commit(lambda: enqueue(job))
    return job


_UNFINISHED = sql.in_list(Job.UNFINISHED)
_EARLIER = f"""
    SELECT {sql.columns(Job, "j")} FROM {Job._meta.db_table} j
    WHERE sale_id = %(sale)s AND kind = %(kind)s
      AND (idempotency_key = %(key)s OR (%(one_at_a_time)s AND status IN {_UNFINISHED}))
    ORDER BY created_at"""


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


def run(job_id, handlers: dict[str, Handler]) -> Job | None:
    """Apply the job once. Business failures finish it as `failed`; transient database
    errors propagate (the caller retries); returns the job as it ended, or None if
    there was nothing to do (already finished, unknown id)."""
    if not _claim(job_id):
        return None
    started = time.perf_counter()
    try:
        with transaction.atomic():
            job = locks.job(job_id)
            if job.is_terminal:  # a concurrent delivery finished it while we waited
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


def reconcile(limit: int = 500) -> int:
    """Re-send jobs whose lease ran out: still `queued` (the broker message may be
    lost) or `running` (the worker may be dead). Duplicates are harmless: a second
    delivery of a finished job does nothing. Returns how many were re-sent."""
    now = timezone.now()
    with transaction.atomic():
        stale = list(
            Job.objects.select_for_update(skip_locked=True)
            .filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING], lease_expires_at__lt=now)
            .order_by("lease_expires_at")[:limit]
        )
        for job in stale:
            job.lease_expires_at = _lease(job.status, now)
        Job.objects.bulk_update(stale, ["lease_expires_at"])
        transaction.on_commit(lambda: [enqueue(job) for job in stale])
    return len(stale)
