"""/api/jobs: read one job, list them (filters, newest first, cursor pages), and the
operator actions (retry, re-send), audited with the token's name and the request id."""

import uuid

from django.http import HttpRequest
from ninja import Query, Router
from ninja.responses import Status

from stockflow.accounts import scopes
from stockflow.platform.errors import DomainError, ErrorCode
from stockflow.stock import selectors
from stockflow.stock.models import Job
from stockflow.stock.services import operations

from . import presenters
from .access import audited, scoped
from .pagination import CursorParam, PageSize, page
from .routes import ERRORS
from .schemas import JobAccepted, JobFilters, JobOut, JobPage

router = Router(tags=["jobs"])


@router.get("/jobs", response={200: JobPage, **ERRORS})
@scoped(scopes.READ)
def list_jobs(
    request: HttpRequest,
    filters: Query[JobFilters],
    cursor: CursorParam = None,
    page_size: PageSize = None,
):
    """Newest first; every filter given must match."""
    jobs = selectors.jobs(**filters.dict())
    return Status(
        200,
        page(
            request,
            jobs,
            ordering=("-created_at", "-id"),
            cursor=cursor,
            page_size=page_size,
            present=presenters.job,
        ),
    )


@router.get("/jobs/{uuid:job_id}", response={200: JobOut, **ERRORS})
@scoped(scopes.READ)
def get_job(request: HttpRequest, job_id: uuid.UUID):
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        raise DomainError(ErrorCode.NOT_FOUND, f"job {job_id} not found")
    return Status(200, presenters.job(job))


@router.post("/jobs/{uuid:job_id}/retry", response={202: JobAccepted, **ERRORS})
@audited("job.retry", scopes.JOBS_OPERATE)
def retry_job(request: HttpRequest, job_id: uuid.UUID):
    """A job that failed with `error`: a new attempt of the same job (409 `not_retryable`
    after a business failure, or once its attempts are used up)."""
    return Status(202, {"job": presenters.job(operations.retry(job_id))})


@router.post("/jobs/{uuid:job_id}/resend", response={202: JobAccepted, **ERRORS})
@audited("job.resend", scopes.JOBS_OPERATE)
def resend_job(request: HttpRequest, job_id: uuid.UUID):
    """A job stuck `queued` or `running`: publish it again now, not when its lease ends."""
    return Status(202, {"job": presenters.job(operations.resend(job_id))})
