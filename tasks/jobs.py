"""Celery tasks: load ids, call one service, record the outcome."""

import structlog
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from django.conf import settings
from django.db import connection

from stockflow.observability import logging as log_config
from stockflow.observability import sentry
from stockflow.platform.errors import ErrorCode
from stockflow.stock import invariants
from stockflow.stock.services import outbox, runner
from stockflow.stock.services.handlers import BATCH_HANDLERS, HANDLERS
from workers.celery import app
from workers.publish import RUN_JOB_TASK
from workers.transient import TransientError, classify

logger = structlog.get_logger(__name__)


class JobTask(Task):
    """Transient faults retry with exponential backoff and full jitter, bounded.
    When retries run out the job is failed with code `error` (and reported once)."""

    autoretry_for = (TransientError,)
    max_retries = settings.JOB_MAX_RETRIES
    retry_backoff = 1
    retry_backoff_max = settings.JOB_RETRY_BACKOFF_MAX_SECONDS
    retry_jitter = True

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        if isinstance(exc, TimeLimitExceeded):
            # The hard time limit: Celery calls this in the worker's MAIN process after
            # killing the child. No database here: the dead child's transaction may still
            # hold the job row (until PostgreSQL notices its client is gone), and waiting
            # for it froze the whole worker. The job stays `running`; the reconciler
            # re-sends it when its lease runs out, and JOB_MAX_ATTEMPTS ends one that
            # always overruns.
            logger.warning("job.left_for_reconciler", job_id=args[0], reason="time_limit")
            return
        if isinstance(exc, TransientError) and exc.reason == "db_unavailable":
            # Recording the failure needs the database that just failed us; the job stays
            # `running` and the reconciler re-delivers it after its lease (bounded by
            # JOB_MAX_ATTEMPTS), so an outage longer than the retry budget loses nothing.
            logger.warning("job.left_for_reconciler", job_id=args[0], reason=exc.reason)
            return
        if isinstance(exc, SoftTimeLimitExceeded):
            # Raised in the middle of a statement: that connection still has it in flight.
            # A new one records the failure; the old backend ends within a second.
            connection.close()
        try:
            runner.fail(args[0], ErrorCode.ERROR, f"{type(exc).__name__}: {exc}"[:2000])
        except Exception:
            logger.exception("job.fail_record_failed", job_id=args[0])


@app.task(bind=True, base=JobTask, name=RUN_JOB_TASK)
def run_job(self, job_id: str):
    context = structlog.contextvars.get_contextvars()
    sentry.tag(
        request_id=context.get("request_id"),
        job_id=job_id,
        celery_task=self.name,
        job_kind=context.get("job_kind"),
    )
    # A retry of this delivery, or the broker handing its message out again after its
    # worker died, resumes the job this delivery claimed; any other message of a job
    # another delivery owns changes nothing (runner: attempts count runs only).
    resuming = self.request.retries > 0 or bool(
        (self.request.delivery_info or {}).get("redelivered")
    )
    try:
        runner.run(
            job_id,
            HANDLERS,
            BATCH_HANDLERS,
            lambda exc: classify(exc) is not None,
            resuming=resuming,
        )
    except Exception as exc:
        reason = classify(exc)
        if reason is None:
            raise
        if reason == "db_unavailable":
            # A broken connection must not be reused by the retry (a lock timeout or a
            # deadlock leaves it usable: its transaction rolled back).
            connection.close()
        raise TransientError(reason, exc) from exc


@app.task(name="stockflow.reconcile_jobs", ignore_result=True)
def reconcile_jobs():
    log_config.quiet_success()  # every few seconds: a line only when it re-sent something
    with sentry.cron("stockflow-reconcile-jobs", settings.JOB_RECONCILE_INTERVAL_SECONDS):
        resent = outbox.reconcile()
    if resent:
        logger.info("jobs.reconciled", resent=resent)
    return resent


@app.task(name="stockflow.check_ledger", ignore_result=True)
def check_ledger():
    """Periodic invariant check; its verdict feeds stockflow_ledger_violations."""
    with sentry.cron("stockflow-check-ledger", settings.LEDGER_CHECK_INTERVAL_SECONDS):
        report = invariants.check()
    violations = sum(len(rows) for rows in report.violations.values())
    invariants.record_verdict(violations)
    log = logger.error if violations else logger.info
    log(
        "ledger.checked",
        violations=violations,
        unfinished_jobs=report.unfinished_jobs,
        failed_checks=[name for name, rows in report.violations.items() if rows],
    )
    return violations
