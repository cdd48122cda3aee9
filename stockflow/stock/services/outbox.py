"""The job lifecycle: accept (outbox write), run (claim, apply, record), fail, reconcile.

Exactly-once *effect* under at-least-once delivery: a job's effects and its
`succeeded` status commit in one transaction that holds the job row lock, so a
second delivery waits for the first and then finds the job terminal.
"""

import datetime
import hashlib
import json
import time
from collections.abc import Callable

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from stockflow.platform import ids, sql
from stockflow.platform.errors import DomainError, ErrorCode
from stockflow.stock import events, locks

from ..models import Job

Handler = Callable[[Job], dict]


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


def accept(
    kind: str,
    sale_id: int,
    payload: dict,
    *,
    idempotency_key: str | None,
    request_id: str,
    precheck: Callable,
) -> tuple[Job, bool]:
    """Write the job row and enqueue it on commit. Returns (job, created).

    The sale row is locked so that concurrent requests for one sale are decided one
    at a time: same Idempotency-Key + same body -> the first job; another body -> 409.
    """
    fp = fingerprint(kind, payload)
    with transaction.atomic(savepoint=False):  # inside the request's audit transaction
        sale = locks.sale(sale_id)
        if sale is None:
            raise DomainError(ErrorCode.NOT_FOUND, f"sale {sale_id} not found")
        # One query for both earlier jobs that decide this request: the one holding this key,
        # and (for `paid`) one still in flight.
        earlier = sql.fetch(
            Job,
            _EARLIER,
            {
                "sale": sale.pk,
                "kind": kind,
                "key": idempotency_key or None,
                "one_at_a_time": kind == Job.Kind.SALE_PAID,
            },
        )
        same_key = next(
            (j for j in earlier if idempotency_key and j.idempotency_key == idempotency_key), None
        )
        if same_key is not None:
            if same_key.fingerprint != fp:
                events.idempotency_conflict(sale.pk, kind, idempotency_key, same_key.pk)
                raise DomainError(
                    ErrorCode.IDEMPOTENCY_CONFLICT,
                    "this Idempotency-Key was already used with a different request body",
                )
            return same_key, False
        if earlier:
            return earlier[0], False  # a PAID job in flight for this sale
        precheck(sale)
        now = timezone.now()
        job = sql.insert(
            Job(
                kind=kind,
                sale=sale,
                payload=payload,
                idempotency_key=idempotency_key or None,
                fingerprint=fp,
                request_id=request_id,
                created_at=now,
                lease_expires_at=_lease(Job.Status.QUEUED, now),
            )
        )
        transaction.on_commit(lambda: enqueue(job))
    return job, True


_EARLIER = f"""
    SELECT {sql.columns(Job, "j")} FROM {Job._meta.db_table} j
    WHERE sale_id = %(sale)s AND kind = %(kind)s
      AND (idempotency_key = %(key)s OR (%(one_at_a_time)s AND status IN ('queued', 'running')))
    ORDER BY created_at"""


_CLAIM = f"""
    UPDATE {Job._meta.db_table}
    SET status = 'running', attempts = attempts + 1, started_at = COALESCE(started_at, %(now)s),
        lease_expires_at = %(lease)s, updated_at = %(now)s
    WHERE id = %(id)s AND status IN ('queued', 'running') AND attempts < %(max_attempts)s"""


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


def _finish(job: Job, status: str, *, result=None, code: str = "", message: str = "") -> None:
    job.status = status
    job.result = result
    job.error_code = code
    job.error_message = message
    job.finished_at = job.updated_at = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            _FINISH,
            [
                status,
                _RESULT.get_db_prep_save(result, connection),
                code,
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
            _finish(job, Job.Status.SUCCEEDED, result=result)
    except DomainError as exc:
        return fail(
            job_id,
            exc.code,
            exc.message,
            details=exc.details,
            duration_s=time.perf_counter() - started,
        )
    events.job_finished(job, time.perf_counter() - started)
    return job


def fail(
    job_id, code: str, message: str, details=None, duration_s: float | None = None
) -> Job | None:
    """Finish a job as failed (unless a concurrent delivery already finished it)."""
    with transaction.atomic():
        job = locks.job(job_id)
        if job is None or job.is_terminal:
            return job
        _finish(
            job,
            Job.Status.FAILED,
            result={"details": details} if details else None,
            code=code,
            message=message,
        )
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
