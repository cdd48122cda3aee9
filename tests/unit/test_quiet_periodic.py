"""An idle worker is quiet: a periodic task that bound quiet_success drops its
task_succeeded line; a job's task_succeeded (the job's outcome line) stays."""

import pytest
import structlog

from stockflow.observability import logging as log_config


@pytest.fixture(autouse=True)
def _clean_context():
    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()


def test_a_job_keeps_its_outcome_line():
    event = {"event": "task_succeeded", "duration_ms": 12}
    assert log_config._drop_redundant(None, "info", dict(event)) == event


def test_a_quiet_periodic_task_drops_only_its_success_line():
    log_config.quiet_success()
    with pytest.raises(structlog.DropEvent):
        log_config._drop_redundant(None, "info", {"event": "task_succeeded"})
    # What it logs when it did something, and a failure, still go out.
    for event in ("jobs.reconciled", "task_failed"):
        assert log_config._drop_redundant(None, "info", {"event": event}) == {"event": event}
