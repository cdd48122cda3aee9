"""The one logging configuration: structlog JSON lines for web, worker and beat.

Both structlog loggers and stdlib loggers (Django, Celery, gunicorn) go through the
same processors: the bound context (request_id, task_id, job_id), ISO timestamp,
level, logger name, formatted exception, PII scrubbing, JSON rendering.
"""

import json
import logging.config
import os

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


def _json(value) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


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
