"""The one logging configuration: structlog JSON lines for web, worker and beat.

Both structlog loggers and stdlib loggers (Django, Celery, gunicorn) go through the
same processors: the bound context (request_id, task_id, job_id), ISO timestamp,
level, logger name, formatted exception, PII scrubbing, JSON rendering.
"""

import json
import logging.config
import os

import orjson
import structlog

from . import pii, tracing

_PRE_CHAIN = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _pre_chain() -> list:
    return [*_PRE_CHAIN, tracing.add_trace_ids] if tracing.enabled() else list(_PRE_CHAIN)


_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS


def _json(value) -> str:
    # orjson: several times cheaper than json.dumps on every line of every request and job.
    try:
        return orjson.dumps(value, default=str, option=_ORJSON_OPTIONS).decode()
    except TypeError:  # what orjson refuses (an int past 64 bits, a cycle): the slow, lenient way
        return json.dumps(value, default=str, separators=(",", ":"))


# Lines that repeat others: request_started (request_finished carries the same request,
# its status and request id), task_enqueued (the job row keeps the request id, every
# worker line carries request, task and job ids, a failed publish logs
# job.enqueue_failed, the reconciler logs its count). One line fewer each, per accept.
_REDUNDANT = frozenset({"request_started", "task_enqueued"})


# Bound by a periodic task (the reconciler every few seconds): its task_succeeded line is
# dropped, so an idle worker stays quiet. The task logs itself when it did something, and
# celery_task_outcomes_total counts every run.
QUIET_SUCCESS = "quiet_success"


def quiet_success() -> None:
    structlog.contextvars.bind_contextvars(**{QUIET_SUCCESS: True})


def _drop_redundant(logger, method_name, event_dict):
    event = event_dict.get("event")
    if event in _REDUNDANT or (
        event == "task_succeeded" and structlog.contextvars.get_contextvars().get(QUIET_SUCCESS)
    ):
        raise structlog.DropEvent
    return event_dict


def logging_dict(level: str | None = None) -> dict:
    """A dictConfig for Django's LOGGING setting (also applied by Celery's setup_logging)."""
    level = level or os.environ.get("LOG_LEVEL", "INFO")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {
                "()": structlog.stdlib.ProcessorFormatter,
                "foreign_pre_chain": _pre_chain(),
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    pii.structlog_processor,
                    structlog.processors.JSONRenderer(serializer=lambda v, **_: _json(v)),
                ],
            }
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            },
            # Warnings and errors as Sentry breadcrumbs (a no-op while Sentry is not started).
            "sentry_breadcrumbs": {
                "class": "sentry_sdk.integrations.logging.BreadcrumbHandler",
                "level": "WARNING",
            },
        },
        "root": {"handlers": ["console", "sentry_breadcrumbs"], "level": level},
        "loggers": {
            "django.server": {"level": "WARNING"},
            "gunicorn.access": {"level": "WARNING"},
            "httpx": {"level": "WARNING"},  # the demo's and tests' own client calls
            # Celery's own per-task INFO lines repeat django-structlog's task_started /
            # task_succeeded (which carry the request id); failures still log at ERROR.
            "celery.app.trace": {"level": "WARNING"},
            "celery.worker.strategy": {"level": "WARNING"},
        },
    }


def configure_structlog() -> None:
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            _drop_redundant,
            *_pre_chain(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def configure(level: str | None = None) -> None:
    logging.config.dictConfig(logging_dict(level))
    configure_structlog()
