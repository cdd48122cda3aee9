"""Flower and celery-exporter against the real stack: a prefork worker with events on,
bin/flower and bin/celery-exporter started exactly as the Procfile starts them, pointed at
the test broker; paid sales through the API; then both must list that run's tasks."""

import secrets
import socket
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from harness.processes import BIN, free_port
from tests.api_helpers import pay_and_wait, product, receive, sale
from tests.conftest import ScriptProcess, script_env
from tests.metrics_helpers import poll, series

RUN_JOB = "stockflow.run_job"
SALES = 4


@pytest.fixture
def flower(tmp_path, worker):
    port = free_port()
    auth = ("tester", secrets.token_urlsafe(16))
    proc = ScriptProcess(
        tmp_path,
        "flower",
        [str(BIN / "flower")],
        script_env(FLOWER_PORT=port, FLOWER_ADDRESS="127.0.0.1", FLOWER_BASIC_AUTH=":".join(auth)),
    )
    proc.url, proc.auth = f"http://127.0.0.1:{port}", auth
    yield proc
    proc.stop()


@pytest.fixture
def exporter(tmp_path, worker, exporter_venv):
    port = free_port()
    proc = ScriptProcess(
        tmp_path,
        "celery-exporter",
        [str(BIN / "celery-exporter")],
        script_env(EXPORTER_PORT=port, EXPORTER_ADDRESS="127.0.0.1"),
    )
    proc.url = f"http://127.0.0.1:{port}"
    yield proc
    proc.stop()


@pytest.fixture
def http():
    with httpx.Client(timeout=30) as c:
        yield c


def test_flower_and_exporter_list_the_tasks_of_a_run(client, worker, flower, exporter, http):
    host = socket.gethostname()  # the worker is "w1@%h"; the exporter labels by the host part
    worker_name = f"{worker.name}@{host}"

    # Both consume the broker's event stream (Redis pub/sub: nothing is buffered for a
    # subscriber that is not there yet), so wait until each has seen the worker's heartbeat.
    poll(
        "flower sees the worker",
        lambda: http.get(f"{flower.url}/metrics", auth=flower.auth).text,
        lambda text: series(text, "flower_worker_online", worker=worker_name) == [1.0],
        flower,
    )
    poll(
        "exporter sees the worker",
        lambda: http.get(f"{exporter.url}/metrics").text,
        lambda text: series(text, "celery_worker_up", hostname=host) == [1.0],
        exporter,
    )

    # The run: paid sales, each one stockflow.run_job task.
    product(client, "FLW-1")
    receive(client, "FLW-1", "L1", 100, 30)
    job_ids = []
    for i in range(SALES):
        s = sale(client, f"FLW-{i}", [("FLW-1", 2)])
        job = pay_and_wait(client, s["id"])
        assert job["status"] == "succeeded", job
        job_ids.append(job["id"])

    # Flower: /api/tasks needs the basic auth, and lists every job's task as succeeded.
    assert http.get(f"{flower.url}/api/tasks").status_code == 401
    assert http.get(f"{flower.url}/api/tasks", auth=(flower.auth[0], "wrong")).status_code == 401
    assert http.get(f"{flower.url}/").status_code == 401

    def run_job_tasks() -> dict[str, dict]:
        r = http.get(f"{flower.url}/api/tasks", params={"taskname": RUN_JOB}, auth=flower.auth)
        r.raise_for_status()
        by_job = {}
        for task_id, task in r.json().items():
            for job_id in job_ids:
                if job_id in (task.get("args") or ""):
                    by_job[job_id] = dict(task, uuid=task_id)
        return by_job

    def all_succeeded(by_job: dict) -> bool:
        return len(by_job) == SALES and all(t["state"] == "SUCCESS" for t in by_job.values())

    tasks = poll(
        "flower lists a succeeded run_job task per job", run_job_tasks, all_succeeded, flower
    )
    assert {t["name"] for t in tasks.values()} == {RUN_JOB}
    # Normally all on our worker; a concurrent test session on the same broker db may lend a hand.
    assert all(t["worker"].endswith(f"@{host}") for t in tasks.values()), tasks

    # celery-exporter: succeeded run_job tasks counted from the events, the worker up, the queue.
    def succeeded(text: str) -> float:
        return sum(series(text, "celery_task_succeeded_total", name=RUN_JOB, hostname=host))

    metrics = poll(
        "exporter counts the run's run_job tasks",
        lambda: http.get(f"{exporter.url}/metrics").text,
        lambda text: succeeded(text) >= SALES,
        exporter,
    )
    assert series(metrics, "celery_worker_up", hostname=host) == [1.0]
    assert series(metrics, "celery_task_runtime_count", name=RUN_JOB, hostname=host)
    assert series(metrics, "celery_queue_length", queue_name="celery")
    # bin/celery-exporter execs the exporter (same pid); the broker URL (it may carry a
    # password) travels by environment, never argv, so `ps` does not show it.
    cmdline = Path(f"/proc/{exporter.proc.pid}/cmdline").read_bytes().decode()
    assert "src.cli" in cmdline and settings.CELERY_BROKER_URL not in cmdline
