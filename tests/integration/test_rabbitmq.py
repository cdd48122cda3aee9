"""RabbitMQ as the broker (workers/rabbitmq.py), against this machine's RabbitMQ in a vhost
of the test's own (deleted afterwards): the web and a prefork worker as real processes,
jobs on quorum queues with a delivery limit and dead-lettering, exactly once.

Where RabbitMQ (or rabbitmqctl, to make the vhost) is missing the tests skip, and fail
in CI (CI=true): never a silent pass. STOCKFLOW_TEST_RABBITMQ: amqp://user:pass@host:port
(default guest on 127.0.0.1:5672)."""

import json
import os
import shutil
import socket
import subprocess
import time
import uuid

import httpx
import pytest
from kombu import Connection, Exchange, Producer

from harness import client as api
from harness.client import Client
from harness.processes import BIN, free_port
from stockflow.stock.models import Location, StockMove
from tests.api_helpers import ok, wait_for_job
from tests.conftest import ScriptProcess, WebProcess, script_env
from tests.metrics_helpers import poll, series
from workers import routing
from workers.publish import RUN_JOB_TASK

RABBIT = os.environ.get("STOCKFLOW_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672")


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"RabbitMQ tests cannot run in CI: {reason}")
    pytest.skip(reason)


def rabbitmqctl(*args: str) -> str:
    out = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def vhost():
    host, port = "127.0.0.1", 5672
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        _unavailable(f"no RabbitMQ at {host}:{port}")
    if not shutil.which("rabbitmqctl"):
        _unavailable("rabbitmqctl not found (it makes the test's own vhost)")
    name = f"stockflow_test_{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    yield name
    rabbitmqctl("delete_vhost", name)


def queues(vhost: str) -> dict[str, dict]:
    """{queue: {"type", "arguments", "messages"}} from rabbitmqctl."""
    out = rabbitmqctl(
        "list_queues", "-p", vhost, "name", "type", "arguments", "messages", "--formatter", "json"
    )
    return {q["name"]: q for q in json.loads(out)}


@pytest.fixture
def rabbit_stack(vhost, tmp_path, worker_factory, token):
    broker = f"{RABBIT}/{vhost}"
    env = {"STOCKFLOW_TEST_BROKER_URL": broker}
    web = WebProcess(tmp_path, "rmq", **env)
    worker = worker_factory(**env)
    with Client(web.url, token, timeout=30) as http:
        yield {"http": http, "worker": worker, "broker": broker, "vhost": vhost}
    web.stop()


def _stock(http, sku: str, quantity: int) -> None:
    ok(api.product(http, sku, "Saline"), 201)
    ok(api.receipt(http, sku, "L1", quantity, api.days(60)), 201)


def test_paid_jobs_run_once_on_quorum_queues(rabbit_stack):
    http, vhost = rabbit_stack["http"], rabbit_stack["vhost"]
    _stock(http, "RMQ-1", 15)
    sales = [ok(api.sale(http, f"S-RMQ-{i}", [api.line("RMQ-1", 1)]), 201) for i in range(12)]
    jobs = [ok(api.pay(http, s["id"], key=f"k-{i}"), 202)["job"] for i, s in enumerate(sales)]
    # A client retry with the same key: the same job, nothing published twice.
    again = api.pay(http, sales[0]["id"], key="k-0")
    assert again.status_code in (200, 202) and again.json()["job"]["id"] == jobs[0]["id"]
    done = [wait_for_job(http, j["id"]) for j in jobs]
    assert {d["status"] for d in done} == {"succeeded"}
    assert all(d["attempts"] == 1 for d in done)
    assert (
        StockMove.objects.filter(
            kind="SALE_OUT", sale_line__sale__number__startswith="S-RMQ"
        ).count()
        == 12
    )
    assert ok(http.get("/readyz"), 200)["checks"]["broker"] == "ok"

    found = queues(vhost)
    for name in ("celery", "stockflow.periodic"):
        assert found[name]["type"] == "quorum", found[name]
        args = {key: value for key, _type, value in found[name]["arguments"]}
        assert args["x-delivery-limit"] == 20, found[name]
        # Jobs are dead-lettered; an expired periodic run is dropped (the next one comes).
        assert args.get("x-dead-letter-exchange") == (
            "stockflow.dead-letter" if name == "celery" else None
        ), found[name]
    assert found["stockflow.dead-letter"]["type"] == "quorum"
    assert any(name.startswith("celery_delayed_") for name in found), "native delayed delivery"


def test_a_poison_message_is_dead_lettered_by_the_broker_and_the_worker_runs_on(rabbit_stack):
    http, vhost = rabbit_stack["http"], rabbit_stack["vhost"]
    with Connection(rabbit_stack["broker"]) as conn:
        Producer(conn.default_channel).publish(
            "this is not a task",
            exchange=Exchange("celery", type="topic"),
            routing_key="celery",
            content_type="application/json",
            content_encoding="utf-8",
            serializer=None,
        )
    deadline = time.time() + 20
    while time.time() < deadline and queues(vhost)["stockflow.dead-letter"]["messages"] < 1:
        time.sleep(0.5)
    assert queues(vhost)["stockflow.dead-letter"]["messages"] == 1
    assert "message.rejected" in rabbit_stack["worker"].log()

    _stock(http, "RMQ-2", 1)
    s = ok(api.sale(http, "S-RMQ-AFTER", [api.line("RMQ-2", 1)]), 201)
    job = ok(api.pay(http, s["id"]), 202)["job"]
    assert wait_for_job(http, job["id"])["status"] == "succeeded"


def test_sharded_jobs_run_on_quorum_shard_queues(vhost, tmp_path, worker_factory, token):
    """JOB_ROUTING=hash: the job goes to its location's shard queue, declared like the
    others (quorum, delivery limit, dead-lettering) by the worker subscribing to it."""
    broker = f"{RABBIT}/{vhost}"
    shard = routing.SHARD_QUEUE.format(Location.objects.get_or_create(code="MAIN")[0].pk % 2)
    env = {"STOCKFLOW_TEST_BROKER_URL": broker, "JOB_ROUTING": "hash", "JOB_SHARDS": "2"}
    web = WebProcess(tmp_path, "rmq-shard", **env)
    worker_factory(WORKER_QUEUES=f"{shard},stockflow.periodic", **env)
    try:
        with Client(web.url, token, timeout=30) as http:
            _stock(http, "RMQ-SHARD", 2)
            s = ok(api.sale(http, "S-RMQ-SHARD", [api.line("RMQ-SHARD", 1)]), 201)
            job = ok(api.pay(http, s["id"]), 202)["job"]
            assert wait_for_job(http, job["id"])["status"] == "succeeded"
    finally:
        web.stop()
    found = queues(vhost)[shard]
    args = {key: value for key, _type, value in found["arguments"]}
    assert found["type"] == "quorum" and args["x-delivery-limit"] == 20, found


def test_flower_and_the_exporter_read_rabbitmq(rabbit_stack, tmp_path, exporter_venv):
    """bin/flower and bin/celery-exporter on the RabbitMQ vhost: both see the worker and
    the run's tasks from its events (a fanout exchange on RabbitMQ, pub/sub on Redis)."""
    broker, worker = rabbit_stack["broker"], rabbit_stack["worker"]
    env = {"CELERY_BROKER_URL": broker, "STOCKFLOW_TEST_BROKER_URL": broker}
    auth = ("tester", "rabbit-pass")
    flower_port, exporter_port = free_port(), free_port()
    flower = ScriptProcess(
        tmp_path,
        "flower-rmq",
        [str(BIN / "flower")],
        script_env(
            FLOWER_PORT=flower_port, FLOWER_BASIC_AUTH=":".join(auth), FLOWER_ADDRESS="127.0.0.1"
        )
        | env,
    )
    exporter = ScriptProcess(
        tmp_path,
        "exporter-rmq",
        [str(BIN / "celery-exporter")],
        script_env(EXPORTER_PORT=exporter_port, EXPORTER_ADDRESS="127.0.0.1") | env,
    )
    host = socket.gethostname()
    try:
        with httpx.Client(timeout=30) as http:
            flower_metrics = f"http://127.0.0.1:{flower_port}/metrics"
            exporter_metrics = f"http://127.0.0.1:{exporter_port}/metrics"
            poll(
                "flower sees the worker",
                lambda: http.get(flower_metrics, auth=auth).text,
                lambda text: (
                    series(text, "flower_worker_online", worker=f"{worker.name}@{host}") == [1.0]
                ),
                flower,
            )
            poll(
                "exporter sees the worker",
                lambda: http.get(exporter_metrics).text,
                lambda text: series(text, "celery_worker_up", hostname=host) == [1.0],
                exporter,
            )
            _stock(rabbit_stack["http"], "RMQ-FLW", 5)
            for i in range(3):
                s = ok(
                    api.sale(rabbit_stack["http"], f"S-RMQ-FLW-{i}", [api.line("RMQ-FLW", 1)]), 201
                )
                job = ok(api.pay(rabbit_stack["http"], s["id"]), 202)["job"]
                assert wait_for_job(rabbit_stack["http"], job["id"])["status"] == "succeeded"
            poll(
                "exporter counts the run's tasks",
                lambda: http.get(exporter_metrics).text,
                lambda text: (
                    sum(
                        series(
                            text, "celery_task_succeeded_total", name=RUN_JOB_TASK, hostname=host
                        )
                    )
                    >= 3
                ),
                exporter,
            )
            poll(
                "flower counts the run's tasks",
                lambda: http.get(flower_metrics, auth=auth).text,
                lambda text: (
                    sum(
                        series(
                            text, "flower_events_total", task=RUN_JOB_TASK, type="task-succeeded"
                        )
                    )
                    >= 3
                ),
                flower,
            )
    finally:
        flower.stop()
        exporter.stop()
