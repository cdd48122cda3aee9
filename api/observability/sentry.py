"""Sentry for web and worker, on when SENTRY_DSN is set.

One issue per job that fails for good: Celery's integration reports a task whose
exception escapes (retries exhausted, or an unexpected error) and ignores retries;
business failures finish the job without raising, so they never reach Sentry.
"""
import logging
import os

import sentry_sdk
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.integrations.django import DjangoIntegration
from sentry_sdk.integrations.logging import LoggingIntegration

from . import pii


def _scrub_event(event, hint):
    """PII out of everything an event carries; failed jobs grouped by kind and exception."""
    for key in ("extra", "contexts", "request", "breadcrumbs", "user", "logentry", "message"):
        if key in event:
            event[key] = pii.scrub(event[key])
    for exc in (event.get("exception") or {}).get("values", []):
        if exc.get("value"):
            exc["value"] = pii.mask_text(exc["value"])
        for frame in (exc.get("stacktrace") or {}).get("frames", []):
            if "vars" in frame:
                frame["vars"] = pii.scrub(frame["vars"])
    event.pop("user", None)
    tags = event.get("tags") or {}
    if "celery_task" in tags and (event.get("exception") or {}).get("values"):
        # Messages carry job ids; group by what failed, not by which job.
        exc_type = event["exception"]["values"][-1].get("type", "Exception")
        event["fingerprint"] = ["job-failed", tags["celery_task"], tags.get("job_kind", "-"), exc_type]
    return event


def init(dsn: str | None = None, *, django: bool = True, **overrides) -> bool:
    """Start Sentry when SENTRY_DSN is set. `django=False` in Celery processes: Django's
    integration there would only wrap every SQL statement in a breadcrumb and a span
    (~3 ms per job measured), and a failed task's event has its own stack and tags."""
    dsn = dsn or os.environ.get("SENTRY_DSN")
    if not dsn:
        return False
    rate = os.environ.get("SENTRY_TRACES_SAMPLE_RATE")
    tracing = bool(rate)
    options = dict(
        dsn=dsn,
        environment=os.environ.get("SENTRY_ENVIRONMENT", "production"),
        release=os.environ.get("SENTRY_RELEASE"),
        send_default_pii=False,
        # Unset, not 0: any rate (0 included) turns tracing on, and then every request and
        # task builds a transaction and spans even when none is sent.
        traces_sample_rate=float(rate) if tracing else None,
        # Only what stockflow asks for: no auto-enabled Redis/httpx/... integrations
        # wrapping every broker command in a span nobody sends.
        auto_enabling_integrations=False,
        integrations=[
            # Middleware and signal spans only matter to tracing; SQL breadcrumbs stay.
            *([DjangoIntegration(middleware_spans=tracing, signals_spans=tracing, cache_spans=False)] if django else []),
            # Trace headers on every task: a worker's error event joins the trace of the
            # request that queued the job, with or without tracing.
            CeleryIntegration(propagate_traces=True, monitor_beat_tasks=False),
            # Warnings become breadcrumbs, never events: errors are reported from exceptions,
            # so a failure is one event, not one per log line about it. INFO lines stay out
            # (several per request, all findable in the logs by the event's request_id tag).
            LoggingIntegration(level=logging.WARNING, event_level=None),
        ],
        before_send=_scrub_event,
        before_send_transaction=_scrub_event,
    )
    options.update(overrides)
    sentry_sdk.init(**options)
    return True


def tag(**tags) -> None:
    for key, value in tags.items():
        if value:
            sentry_sdk.set_tag(key, str(value))
