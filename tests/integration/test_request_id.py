"""One request id from the caller's header to the web log, the job, and the worker's log lines."""

import contextlib
import json

from tests import faults
from tests.api_helpers import ok, product, receive, sale, wait_for_job


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def test_request_id_travels_from_header_through_task_headers_to_worker_logs(client, worker, caplog):
    product(client, "RID")
    receive(client, "RID", "L1", 5, 30)
    s = sale(client, "S-RID", [("RID", 2)])
    rid = "caller-chosen-id-0001"

    response = client.post(
        f"/api/sales/{s['id']}/transition",
        json={"to_status": "paid"},
        headers={"X-Request-ID": rid},
    )
    job = ok(response, 202)["job"]
    assert response.headers["X-Request-ID"] == rid
    assert job["request_id"] == rid
    finished = wait_for_job(client, job["id"])
    assert finished["status"] == "succeeded"

    # The web runs in this process (live server): its structlog events are the records' dicts.
    web_lines = [
        r.msg for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("request_id") == rid
    ]
    assert any(
        line["event"] == "sale.transition" and line["result"] == "accepted" for line in web_lines
    ), web_lines
    assert any(line["event"] == "request_finished" for line in web_lines)

    worker_lines = [line for line in json_lines(worker.log()) if line.get("request_id") == rid]
    events = {line["event"] for line in worker_lines}
    assert {
        "sale.transition",
        "sale.paid.stock_consumed",
        "consistency_checkpoint",
        "task_succeeded",
    } == events, events  # one outcome line (task_succeeded) plus the domain events
    consumed = next(line for line in worker_lines if line["event"] == "sale.paid.stock_consumed")
    assert (
        consumed["job_id"] == job["id"]
        and consumed["stock_moves_count"] == 1
        and consumed["total_quantity"] == 2
    )
    assert all(line.get("task_id") for line in worker_lines)


def test_a_job_resent_by_the_reconciler_keeps_its_original_request_id(
    client, worker_factory, broker
):
    from stockflow.stock.models import Job
    from stockflow.stock.services import outbox as jobs

    product(client, "RID2")
    receive(client, "RID2", "L1", 5, 30)
    s = sale(client, "S-RID2", [("RID2", 1)])
    rid = "original-request-0002"
    job = ok(
        client.post(
            f"/api/sales/{s['id']}/transition",
            json={"to_status": "paid"},
            headers={"X-Request-ID": rid},
        ),
        202,
    )["job"]
    faults.lose_queued_messages()  # the broker lost the message before any worker saw it
    Job.objects.filter(pk=job["id"]).update(
        lease_expires_at=Job.objects.get(pk=job["id"]).created_at
    )
    worker = worker_factory()

    assert jobs.reconcile() == 1  # what beat does every few seconds
    assert wait_for_job(client, job["id"])["status"] == "succeeded"
    lines = [line for line in json_lines(worker.log()) if line.get("job_id") == job["id"]]
    assert lines and all(line["request_id"] == rid for line in lines)
    assert any(line["event"] == "sale.paid.stock_consumed" for line in lines)
