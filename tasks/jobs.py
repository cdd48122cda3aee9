"""Celery tasks: load ids, call one service, record the outcome."""
import structlog
from celery import Task
from django.db import connection

from api.jobs import services as jobs
from api.jobs.dispatch import RUN_JOB_TASK
from api.jobs.handlers import HANDLERS
from workers.celery_app import app
from workers.transient import TransientError, classify

logger = structlog.get_logger(__name__)


class JobTask(Task):
    """Transient faults retry with exponential backoff and full jitter, bounded.
    When retries run out the job is failed with code `error` (and reported once)."""

    autoretry_for = (TransientError,)
    max_retries = 5
    retry_backoff = 1
    retry_backoff_max = 30
    retry_jitter = True

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        try:
            jobs.fail(args[0], "error", f"{type(exc).__name__}: {exc}"[:2000])
        except Exception:
            logger.exception("job.fail_record_failed", job_id=args[0])


@app.task(bind=True, base=JobTask, name=RUN_JOB_TASK)
def run_job(self, job_id: str):
    try:
        jobs.run(job_id, HANDLERS)
    except Exception as exc:
        reason = classify(exc)
        if reason is None:
            raise
        # A broken connection must not be reused by the retry.
        connection.close()
        raise TransientError(reason, exc) from exc


@app.task(name="stockflow.reconcile_jobs", ignore_result=True)
def reconcile_jobs():
    resent = jobs.reconcile()
    if resent:
        logger.info("jobs.reconciled", resent=resent)
    return resent
