"""Sentry for web and worker, on when SENTRY_DSN is set.

One issue per job that fails for good: Celery's integration reports a task whose
exception escapes (retries exhausted, or an unexpected error) and ignores retries;
business failures finish the job without raising, so they never reach Sentry.
"""

import contextlib
import math
import os
import time

import sentry_sdk
import sentry_sdk.crons
from django.core.signals import got_request_exception
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.integrations.django import DjangoIntegration
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.integrations.threading import ThreadingIntegration

from . import pii


def _scrub_event(event, hint):
    """PII out of everything an event carries; failed jobs grouped by kind and exception."""
    for key in ("extra", "contexts", "request", "breadcrumbs", "user", "logentry", "message"):
        if key in event:
            event[key] = pii.scrub(event[key])
    for exc in (event.get("exception") or {}).get("values", []):
        if exc.get("value"):
            exc["value"] = pii.mask_text(exc["value"])
        _scrub_frames(exc.get("stacktrace"))
    for thread in (event.get("threads") or {}).get("values", []):
        _scrub_frames(thread.get("stacktrace"))
    for span in event.get("spans") or []:  # transactions: span descriptions hold URLs
        if span.get("description"):
            span["description"] = pii.mask_text(span["description"])
        if "data" in span:
            span["data"] = pii.scrub(span["data"])
    event.pop("user", None)
    tags = event.get("tags") or {}
    if "celery_task" in tags and (event.get("exception") or {}).get("values"):
        # Messages carry job ids; group by what failed, not by which job.
        exc_type = event["exception"]["values"][-1].get("type", "Exception")
        event["fingerprint"] = [
            "job-failed",
            tags["celery_task"],
            tags.get("job_kind", "-"),
            exc_type,
        ]
    return event


def _scrub_frames(stacktrace) -> None:
    # Frame variables arrive as repr() strings ("{'name': 'Ada'}", "'ada@example.com'"):
    # their keys and their values are both scrubbed, the values as text.
    for frame in (stacktrace or {}).get("frames", []):
        if "vars" in frame:
            frame["vars"] = pii.scrub(frame["vars"])


def init(dsn: str | None = None, *, django: bool = True, **overrides) -> bool:
    """Start Sentry when SENTRY_DSN is set. `django=True` in the web.

    Django's integration is only installed when tracing is on: without tracing it would
    still wrap every request, middleware and SQL statement (a span and a breadcrumb each:
    ~25 % of the web's CPU per accept, measured with py-spy). Errors-only, the web gets
    what on-call needs from `request_scope` (one isolation scope per request, tagged with
    the request id) and from explicit captures: the API's unexpected-exception handler,
    and Django's got_request_exception for the HTML views. Celery processes pass
    `django=False` (a failed task's event has its own stack and tags)."""
    dsn = dsn or os.environ.get("SENTRY_DSN")
    if not dsn:
        return False
    rate = overrides.pop("traces_sample_rate", None)
    if rate is None and os.environ.get("SENTRY_TRACES_SAMPLE_RATE"):
        rate = float(os.environ["SENTRY_TRACES_SAMPLE_RATE"])
    tracing = rate is not None
    options = {
        "dsn": dsn,
        "environment": os.environ.get("SENTRY_ENVIRONMENT", "production"),
        "release": os.environ.get("SENTRY_RELEASE"),
        # What integrations collect by themselves (send_default_pii is deprecated): no user,
        # no cookies, no query strings, no request bodies, no SQL parameters, no queue
        # payloads; headers minus the sensitive ones; frame variables, scrubbed below.
        "data_collection": {
            "user_info": False,
            "cookies": {"mode": "off"},
            "http_headers": {"request": {"mode": "denylist"}},
            "http_bodies": [],
            "url_query_params": {"mode": "off"},
            "database_query_data": False,
            "queues": False,
            "stack_frame_variables": True,
        },
        # Unset, not 0: any rate (0 included) turns tracing on, and then every request and
        # task builds a transaction and spans even when none is sent.
        "traces_sample_rate": rate,
        # Only what stockflow asks for: no auto-enabled Redis/httpx/... integrations
        # wrapping every broker command in a span nobody sends.
        "auto_enabling_integrations": False,
        "integrations": [
            *(
                [DjangoIntegration(middleware_spans=True, signals_spans=True, cache_spans=False)]
                if django and tracing
                else []
            ),
            # Only with tracing: trace headers on every task (a worker's error event joins
            # the trace of the request that queued the job) cost a span per publish (the
            # task, its sent event, each worker event) and a transaction per task, sampled
            # or not. Errors-only, failures are reported by `task_failed` below.
            *(
                [CeleryIntegration(propagate_traces=True, monitor_beat_tasks=False)]
                if tracing
                else []
            ),
            # Every request and task opens its own scope (request_scope, the Celery
            # integration): copying the submitting thread's scopes into gunicorn's thread
            # pool on every request would be wasted.
            ThreadingIntegration(propagate_scope=False),
        ],
        # Warnings become breadcrumbs, never events: errors are reported from exceptions, so
        # a failure is one event, not one per log line about it. That is the root logger's
        # WARNING-level BreadcrumbHandler (observability/logging.py); the integration would
        # look at every INFO line too (several per request and per job).
        "disabled_integrations": [LoggingIntegration()],
        "before_send": _scrub_event,
        "before_send_transaction": _scrub_event,
    }
    options.update(overrides)
    sentry_sdk.init(**options)
    if django:
        got_request_exception.connect(_capture_request_exception, dispatch_uid="stockflow-sentry")
    return True


def _without_django_integration() -> bool:
    return sentry_sdk.get_client().get_integration(DjangoIntegration) is None


def _capture_request_exception(sender, request=None, **kwargs):
    # An exception escaping a view (admin, console): Django's integration, when installed,
    # reports these itself. The API's own handler captures the API's.
    if sentry_sdk.is_initialized() and _without_django_integration():
        sentry_sdk.capture_exception()


@contextlib.contextmanager
def request_scope(request_id: str, method: str, path: str):
    """One Sentry scope per request: its tags and breadcrumbs stay out of the next
    request on the same thread. Events carry the method and path (never the query
    string or headers), unless Django's integration records the request itself."""
    if not sentry_sdk.is_initialized():
        yield
        return
    with sentry_sdk.isolation_scope() as scope:
        scope.set_tag("request_id", request_id)
        if _without_django_integration():
            scope.add_event_processor(_request_info(method, path))
        yield


def _request_info(method: str, path: str):
    def processor(event, hint):
        event.setdefault("request", {"method": method, "url": path})
        return event

    return processor


def task_started(task_name: str) -> None:
    """Errors-only worker: a pool child runs one task at a time, so a cleared scope per
    task keeps one task's tags and breadcrumbs out of the next (the integration, when
    tracing is on, opens a scope per task itself)."""
    if sentry_sdk.is_initialized() and _without_celery_integration():
        scope = sentry_sdk.get_isolation_scope()
        scope.clear()
        scope.set_tag("celery_task", task_name)


def task_failed(exception: BaseException) -> None:
    """A task that failed for good (retries exhausted, or an unexpected error): one event.
    Retries never get here (Celery sends task_retry, not task_failure)."""
    if sentry_sdk.is_initialized() and _without_celery_integration():
        sentry_sdk.capture_exception(exception)


def _without_celery_integration() -> bool:
    return sentry_sdk.get_client().get_integration(CeleryIntegration) is None


def tag(**tags) -> None:
    for key, value in tags.items():
        if value:
            sentry_sdk.set_tag(key, str(value))


# Sentry Crons: a check-in per run of a periodic task, so on-call hears when beat (or every
# worker) stops. Sentry's finest schedule is a minute: a task that runs every few seconds
# checks in at most once a minute per process.
_last_checkin: dict[str, float] = {}


@contextlib.contextmanager
def cron(slug: str, every_seconds: float):
    now = time.monotonic()
    if not sentry_sdk.is_initialized() or now - _last_checkin.get(slug, -math.inf) < 60:
        yield
        return
    _last_checkin[slug] = now
    minutes = max(1, math.ceil(every_seconds / 60))
    config = {
        "schedule": {"type": "interval", "value": minutes, "unit": "minute"},
        "checkin_margin": minutes + 1,  # minutes late before Sentry calls it missed
        "max_runtime": max(5, 2 * minutes),
        "timezone": "UTC",
    }
    with sentry_sdk.crons.monitor(monitor_slug=slug, monitor_config=config):
        yield
