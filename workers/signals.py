"""Worker-side wiring: process bootstrap, request context, task metrics, the metrics
endpoint. Importing this module connects the handlers (workers/celery.py does).

Request id: django-structlog's Celery receiver copies the publisher's structlog
context (request_id, job_id) into a task header and binds it in the worker before
the task body runs. This module adds what it lacks: a publish timestamp for queue
wait, bounded task metrics, and multiprocess-safe exposition.
"""

import os
import time
from datetime import datetime

import structlog
from celery import signals
from django.conf import settings
from django.db import close_old_connections, connections
from prometheus_client import start_http_server

from stockflow.observability import logging as log_config
from stockflow.observability import metrics, sentry
from stockflow.observability.bootstrap import bootstrap
from stockflow.observability.exposition import process_registry
from workers import rabbitmq
from workers.transient import TransientError, cause_of

logger = structlog.get_logger(__name__)

_OUTCOMES = {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried"}


@signals.celeryd_init.connect
def _bootstrap_worker(**kwargs):
    # In the worker's main process, before the pool forks: every child inherits it.
    bootstrap("worker")
    _worker_db_timeouts()


def _worker_db_timeouts() -> None:
    """The worker's lock and statement timeouts instead of the web's (config/settings.py),
    for every connection this process and its children open; what follows them in the
    options (DATABASE_URL's, PGOPTIONS) still wins. Behind PgBouncer (DATABASE_POOLER) the
    timeouts are the pool's: the worker's alias instead of the web's (config/pooler.py), as
    the web's options are swapped for the worker's here otherwise."""
    database = settings.DATABASES["default"]
    if settings.DATABASE_POOLER:
        if database["NAME"] == settings.DB_NAME_BY_ROLE["web"]:
            database["NAME"] = settings.DB_NAME_BY_ROLE["worker"]
    else:
        options = database["OPTIONS"]
        web, worker = settings.DB_TIMEOUTS_BY_ROLE["web"], settings.DB_TIMEOUTS_BY_ROLE["worker"]
        current = options.get("options", "")
        options["options"] = worker + current[len(web) :] if current.startswith(web) else current
    connections.close_all()  # none should be open yet; one that is would keep the web's


@signals.beat_init.connect
def _bootstrap_beat(**kwargs):
    bootstrap("beat")


@signals.setup_logging.connect
def _setup_logging(**kwargs):
    # Connecting this signal stops Celery from installing its own handlers: Celery's
    # logs go through the same JSON renderer as everything else.
    log_config.configure()


@signals.before_task_publish.connect
def _stamp_publish_time(headers=None, **kwargs):
    if headers is not None:
        headers["published_at"] = time.time()


@signals.task_prerun.connect
def _db_connections(**kwargs):
    # Django's per-request rule, per task: drop a connection past DB_CONN_MAX_AGE, or one
    # a failed task left unusable, before the task uses it.
    close_old_connections()


@signals.task_prerun.connect
def _task_started(task=None, **kwargs):
    name = task.name
    sentry.task_started(name)
    task.request._stockflow_started = time.perf_counter()
    metrics.TASK_STARTED.labels(name).inc()
    published = getattr(task.request, "published_at", None)
    if published:
        eta = task.request.eta
        ready_at = max(float(published), _timestamp(eta)) if eta else float(published)
        metrics.TASK_QUEUE_WAIT.labels(name).observe(max(0.0, time.time() - ready_at))


def _timestamp(eta) -> float:
    return datetime.fromisoformat(eta).timestamp() if isinstance(eta, str) else eta.timestamp()


@signals.task_postrun.connect
def _task_finished(task=None, state=None, **kwargs):
    outcome = _OUTCOMES.get(state, "failed")
    metrics.TASK_OUTCOMES.labels(task.name, outcome).inc()
    started = getattr(task.request, "_stockflow_started", None)
    if started is not None:
        metrics.TASK_RUNTIME.labels(task.name, outcome).observe(time.perf_counter() - started)


@signals.task_retry.connect
def _task_retried(sender=None, reason=None, **kwargs):
    cause = getattr(reason, "exc", reason)  # Celery passes its Retry, which carries the error
    metrics.TASK_RETRIES.labels(
        sender.name, cause.reason if isinstance(cause, TransientError) else "other"
    ).inc()


@signals.task_failure.connect
def _task_failed(sender=None, exception=None, **kwargs):
    metrics.EXCEPTIONS.labels(type(cause_of(exception)).__name__, "worker").inc()
    sentry.task_failed(exception)


@signals.worker_ready.connect
def _declare_dead_letter(sender=None, **kwargs):
    # RabbitMQ: where the quorum queues dead-letter to must exist before the first rejection.
    app = sender.app
    if rabbitmq.is_amqp(app.conf.broker_url):
        with app.connection_for_write() as connection:
            rabbitmq.declare_dead_letter(connection)


@signals.worker_ready.connect
def _serve_metrics(sender=None, **kwargs):
    # Main process only: one exposition summing every child's values.
    port = int(os.environ.get("WORKER_METRICS_PORT", "0") or 0)
    if port:
        addr = os.environ.get("WORKER_METRICS_ADDR", "127.0.0.1")
        try:
            start_http_server(port, addr=addr, registry=process_registry())
        except OSError as exc:  # e.g. a second worker on this host with the same port
            logger.error("worker.metrics_port_unavailable", port=port, error=str(exc))


@signals.worker_process_shutdown.connect
def _child_exit(pid=None, **kwargs):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())
