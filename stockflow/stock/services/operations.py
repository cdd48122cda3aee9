"""Operator actions on jobs (the API's `jobs:operate` scope and the staff console):
retry a job that failed with `error`, re-send a job stuck `queued` or `running` now
instead of waiting for its lease.

A retry is a new attempt of the same job: same id, same request id, its attempts keep
counting, and JOB_MAX_ATTEMPTS still bounds them (the reconciler's rule). A business
failure (`insufficient_stock`, `invalid_transition`, …) is an answer, not a fault: it is
not retryable; the caller asks again with a new request.
"""

import structlog
from django.conf import settings
from django.db import IntegrityError, OperationalError, transaction
from django.utils import timezone

from stockflow.platform.errors import DomainError, ErrorCode
from stockflow.stock import locks

from ..models import Job
from .outbox import enqueue, lease

logger = structlog.get_logger("stockflow.domain")


# A job row held longer than this is being run right now: not stuck, nothing to do.
_LOCK_WAIT_MS = 500


def _locked(job_id) -> Job:
    try:
        job = locks.job(job_id, lock_timeout_ms=_LOCK_WAIT_MS)
    except OperationalError as exc:
        if getattr(exc.__cause__, "sqlstate", None) != "55P03":  # lock_not_available
            raise
        raise DomainError(
            ErrorCode.CONFLICT, f"job {job_id} is being run right now; look again shortly"
        ) from None
    if job is None:
        raise DomainError(ErrorCode.NOT_FOUND, f"job {job_id} not found")
    return job


def retry(job_id) -> Job:
    """Queue a job that failed with `error` again and publish it after commit."""
    with transaction.atomic():
        job = _locked(job_id)
        if job.status != Job.Status.FAILED or job.error_code != ErrorCode.ERROR:
            raise DomainError(
                ErrorCode.NOT_RETRYABLE,
                f"job {job.pk} is {job.status}"
                + (f" ({job.error_code})" if job.error_code else "")
                + ": only a job that failed with `error` can be retried; after a business"
                " failure, send a new request",
            )
        if job.attempts >= settings.JOB_MAX_ATTEMPTS:
            raise DomainError(
                ErrorCode.NOT_RETRYABLE,
                f"job {job.pk} has used its {settings.JOB_MAX_ATTEMPTS} attempts (JOB_MAX_ATTEMPTS)",
            )
        now = timezone.now()
        failed_with = job.error_message
        job.status = Job.Status.QUEUED
        job.result, job.error_code, job.error_message, job.finished_at = None, "", "", None
        job.lease_expires_at = lease(Job.Status.QUEUED, now)
        try:
            with transaction.atomic():  # a savepoint: the unique index may refuse it
                job.save(
                    update_fields=[
                        "status",
                        "result",
                        "error_code",
                        "error_message",
                        "finished_at",
                        "lease_expires_at",
                        "updated_at",
                    ]
                )
        except IntegrityError:
            # One unfinished PAID job per sale: the caller already paid again meanwhile.
            raise DomainError(
                ErrorCode.CONFLICT,
                f"another {job.kind} job for sale {job.sale_id} is in flight",
            ) from None
        transaction.on_commit(lambda: enqueue(job))
    logger.info(
        "job.retried",
        job_id=str(job.pk),
        job_kind=job.kind,
        attempts=job.attempts,
        previous_error=failed_with[:200],
    )
    return job


def resend(job_id) -> Job:
    """Publish a `queued` or `running` job again now (its lease starts over). A second
    delivery of a job another one is running is harmless: it finds the job held or done."""
    with transaction.atomic():
        job = _locked(job_id)
        if job.is_terminal:
            raise DomainError(
                ErrorCode.NOT_RETRYABLE,
                f"job {job.pk} is {job.status}: only a queued or running job can be re-sent",
            )
        job.lease_expires_at = lease(job.status, timezone.now())
        job.save(update_fields=["lease_expires_at", "updated_at"])
        transaction.on_commit(lambda: enqueue(job))
    logger.info("job.resent", job_id=str(job.pk), job_kind=job.kind, status=job.status)
    return job
