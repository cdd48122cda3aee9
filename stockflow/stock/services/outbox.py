"""The outbox: accepting a job (`earlier` decides a repeated request, else `create`
writes the row; `create_at_once` does both in one statement), handing it to the broker
after commit, and re-sending it when its lease runs out (`reconcile`). Running a job is
stockflow.stock.services.runner.

The requesting services (payment, refund) lock the sale and apply their own business
check between `earlier` and `create`.
"""

import datetime
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import structlog
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Model
from django.utils import timezone
from django.utils.module_loading import import_string

from stockflow.platform import sql
from stockflow.platform.errors import DomainError, ErrorCode
from stockflow.stock import events

from ..models import Job, Sale

logger = structlog.get_logger(__name__)


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


def lease(status: str, now: datetime.datetime) -> datetime.datetime:
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
    job = sql.insert(_new_job(sale.pk, sale.location_id, request))
    job.sale = sale
    transaction.on_commit(lambda: enqueue(job))
    return job


def _new_job(sale_id: int, location_id: int | None, request: JobRequest) -> Job:
    now = timezone.now()
    return Job(
        kind=request.kind,
        sale_id=sale_id,
        location_id=location_id,
        payload=request.payload,
        idempotency_key=request.idempotency_key or None,
        fingerprint=request.fingerprint,
        request_id=request.request_id,
        created_at=now,
        lease_expires_at=lease(Job.Status.QUEUED, now),
    )


def create_at_once(
    sale_id: int,
    request: JobRequest,
    sale_status_in,
    also: Callable[[Job], Model] | None = None,
) -> tuple[Job, str] | None:
    """The common case of an accept in one autocommitted statement: insert the job (and
    the row `also` makes for it, e.g. the audit row) if the sale exists with a status in
    `sale_status_in` and no unique index objects — no earlier job with this
    Idempotency-Key (job_idempotency_key_once), for `paid` none in flight
    (job_one_active_paid_per_sale). Returns (job, the sale's status), enqueued on commit;
    None when anything else must be decided: the caller then takes the locked path
    (`earlier`, its business check, `create`), which reads what stood in the way.

    The sale is share-locked first (FOR KEY SHARE, as the job's foreign key check would
    anyway): a locked path or a worker holding the sale is waited for before this
    statement writes an index entry, so the two never wait on each other."""
    job = _new_job(sale_id, None, request)
    # The job's location is its sale's, read by the same statement.
    insert_job, params = sql.insert_select(job, "s", taken={"location_id": "s.location_id"})
    statement = (
        f"WITH s AS (SELECT status, location_id FROM {Sale._meta.db_table} WHERE id = %s"
        f" AND status IN {sql.in_list(sorted(sale_status_in))} FOR KEY SHARE),"
        f" ins AS ({insert_job} ON CONFLICT DO NOTHING RETURNING 1)"
    )
    params = [sale_id, *params]
    if also is not None:
        insert_also, also_params = sql.insert_select(also(job), "ins")
        statement += f", also AS ({insert_also})"
        params += also_params
    with connection.cursor() as cursor:
        cursor.execute(statement + " SELECT s.status, s.location_id FROM s, ins", params)
        row = cursor.fetchone()
    if row is None:
        return None
    job.location_id = row[1]
    job._state.adding = False
    job._state.db = connection.alias
    transaction.on_commit(lambda: enqueue(job))  # autocommit: at once
    return job, row[0]


UNFINISHED_SQL = sql.in_list(Job.UNFINISHED)
_EARLIER = f"""
    SELECT {sql.columns(Job, "j")} FROM {Job._meta.db_table} j
    WHERE sale_id = %(sale)s AND kind = %(kind)s
      AND (idempotency_key = %(key)s OR (%(one_at_a_time)s AND status IN {UNFINISHED_SQL}))
    ORDER BY created_at"""


def reconcile(limit: int = 500) -> int:
    """Re-send jobs whose lease ran out: still `queued` (the broker message may be
    lost; each later re-send of it waits longer) or `running` (the worker may be dead).
    Duplicates are harmless: a second delivery of a finished job does nothing. Returns how
    many were re-sent."""
    now = timezone.now()
    with transaction.atomic():
        stale = list(
            Job.objects.select_for_update(skip_locked=True)
            .filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING], lease_expires_at__lt=now)
            .order_by("lease_expires_at")[:limit]
        )
        for job in stale:
            job.lease_expires_at = lease(job.status, now)
            if job.status == Job.Status.QUEUED:
                # Queued past its lease again: more likely behind a backlog than lost. Each
                # re-send waits as long as the job has waited already (at most 10 leases), so
                # a backlog cannot feed itself with duplicates a durable queue keeps (chaos on
                # RabbitMQ without it: 96 343 re-sends for 11 904 jobs, never drained).
                job.lease_expires_at += min(
                    now - job.created_at,
                    datetime.timedelta(seconds=10 * settings.JOB_QUEUED_LEASE_SECONDS),
                )
        Job.objects.bulk_update(stale, ["lease_expires_at"])
        transaction.on_commit(lambda: [enqueue(job) for job in stale])
    return len(stale)
