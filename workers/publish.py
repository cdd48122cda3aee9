"""The outbox's publisher (settings.JOB_PUBLISHER): hands a job id to the broker, on the
queue its location routes to (workers/routing.py). The only place that knows how a job
becomes a Celery message."""

import structlog

from workers import routing
from workers.celery import app

logger = structlog.get_logger(__name__)

RUN_JOB_TASK = "stockflow.run_job"


def enqueue(job) -> bool:
    # The job's own request id rides in the task headers (django-structlog), also
    # when the reconciler re-sends it long after the request ended.
    with structlog.contextvars.bound_contextvars(
        request_id=job.request_id, job_id=str(job.pk), job_kind=job.kind
    ):
        try:
            app.send_task(
                RUN_JOB_TASK, args=[str(job.pk)], queue=routing.job_queue(job.location_id)
            )
            return True
        except Exception as exc:  # broker down after kombu's own bounded retries
            # The job row is committed; the reconciler re-sends it once its lease runs out.
            logger.warning("job.enqueue_failed", error=type(exc).__name__)
            return False
