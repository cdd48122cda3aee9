"""Prometheus exposition: the web's /metrics (token-protected), the worker's own port,
and the scrape-time gauges computed from PostgreSQL and the ledger check."""

import hmac
import os
import time

from django.conf import settings
from django.db import connection
from django.http import HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from stockflow.platform import redis_client

LEDGER_KEY = "stockflow:ledger-check"


def process_registry():
    """All of this service's processes (multiprocess mode) or just this one."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    return REGISTRY


class BacklogCollector:
    """Jobs by status and the oldest queued job's age: one query on the partial
    index of unfinished jobs, run at scrape time, exposed by the web only."""

    def collect(self):
        jobs = GaugeMetricFamily("stockflow_jobs", "Unfinished jobs by status.", labels=["status"])
        oldest = GaugeMetricFamily(
            "stockflow_oldest_queued_job_age_seconds", "Age of the oldest queued job (0 if none)."
        )
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT status, COUNT(*), EXTRACT(EPOCH FROM now() - MIN(created_at)) FROM jobs_job "
                "WHERE status IN ('queued', 'running') GROUP BY status"
            )
            rows = {status: (count, age) for status, count, age in cursor.fetchall()}
        for status in ("queued", "running"):
            jobs.add_metric([status], rows.get(status, (0, None))[0])
        oldest.add_metric([], float(rows.get("queued", (0, 0))[1] or 0))
        yield jobs
        yield oldest

        violations = GaugeMetricFamily(
            "stockflow_ledger_violations",
            "Ledger invariant violations found by the last periodic check (0 = clean).",
        )
        checked = GaugeMetricFamily(
            "stockflow_ledger_last_check_timestamp_seconds",
            "Unix time of the last periodic ledger check.",
        )
        state = redis_client.client().hgetall(LEDGER_KEY)
        if state:
            violations.add_metric([], float(state[b"violations"]))
            checked.add_metric([], float(state[b"checked_at"]))
        yield violations
        yield checked


_backlog_registry = CollectorRegistry(auto_describe=False)
_backlog_registry.register(BacklogCollector())


def record_ledger_check(violations: int) -> None:
    redis_client.client().hset(
        LEDGER_KEY, mapping={"violations": violations, "checked_at": time.time()}
    )


def metrics_view(request):
    """GET /metrics with `Authorization: Bearer $METRICS_TOKEN`; refused when no token is configured."""
    expected = settings.METRICS_TOKEN
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        return HttpResponse(
            "metrics need a bearer token (METRICS_TOKEN)\n",
            status=401,
            content_type="text/plain",
            headers={"WWW-Authenticate": "Bearer"},
        )
    body = generate_latest(process_registry())
    try:
        body += generate_latest(_backlog_registry)
    except Exception:  # the database or Redis is down: still expose the process metrics
        pass
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
