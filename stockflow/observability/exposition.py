"""Prometheus exposition: which registry a process exposes (the web's /metrics, the
worker's own port), and the gauges computed at scrape time from readers the caller
supplies (the web wires the stock app's backlog and ledger-verdict readers)."""

import os
from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector


def process_registry():
    """All of this service's processes (multiprocess mode) or just this one."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    return REGISTRY


class ScrapeTimeCollector:
    """Jobs by status, the oldest queued job's age, and the last ledger check's verdict,
    read when scraped.

    backlog()        -> ({status: jobs}, oldest queued job's age in seconds)
    ledger_verdict() -> (violations, unix time checked), or None before the first check
    """

    def __init__(
        self,
        backlog: Callable[[], tuple[dict[str, int], float]],
        ledger_verdict: Callable[[], tuple[float, float] | None],
    ):
        self.backlog = backlog
        self.ledger_verdict = ledger_verdict

    def collect(self):
        jobs = GaugeMetricFamily("stockflow_jobs", "Unfinished jobs by status.", labels=["status"])
        oldest = GaugeMetricFamily(
            "stockflow_oldest_queued_job_age_seconds", "Age of the oldest queued job (0 if none)."
        )
        counts, oldest_age = self.backlog()
        for status, count in counts.items():
            jobs.add_metric([status], count)
        oldest.add_metric([], oldest_age)
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
        verdict = self.ledger_verdict()
        if verdict is not None:
            violations.add_metric([], verdict[0])
            checked.add_metric([], verdict[1])
        yield violations
        yield checked


def scrape_time_registry(collector: ScrapeTimeCollector) -> CollectorRegistry:
    """A registry of its own: exposed after the process metrics, and left out when its
    readers fail (database or Redis down)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
