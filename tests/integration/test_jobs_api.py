"""GET /api/jobs (filters, newest first, cursor pages stable under inserts) and the
operator actions POST /api/jobs/{id}/retry and /resend (scope `jobs:operate`, audited),
against a real worker: a retried job runs again as the same job, once."""

import threading
from datetime import datetime

import pytest

from harness import client as api
from harness.client import Client
from stockflow.accounts import scopes
from stockflow.accounts.models import ApiToken, AuditEntry
from stockflow.stock.models import StockMove
from tests import faults
from tests.api_helpers import ok, pay, product, receive, sale, wait_for_job

# --- helpers -------------------------------------------------------------------------------


@pytest.fixture
def reject_paid(transactional_db):
    yield faults.reject_paid
    faults.allow_paid()


def _client(live_server, *token_scopes) -> Client:
    raw = ApiToken.issue("ops-" + "-".join(token_scopes), token_scopes)[1]
    return Client(live_server.url, raw, timeout=30)


@pytest.fixture
def operator(live_server, transactional_db):
    token, raw = ApiToken.issue("night-operator", (scopes.READ, scopes.JOBS_OPERATE))
    with Client(live_server.url, raw, timeout=30) as c:
        yield c


def _page(client, **params) -> dict:
    return ok(client.get("/api/jobs", params=params), 200)


def _walk(client, **params) -> list[dict]:
    """Every page, following `next` until it is null."""
    page, rows = _page(client, **params), []
    while True:
        rows += page["results"]
        if not page["next"]:
            return rows
        page = ok(client.get(page["next"]), 200)


# --- the list ------------------------------------------------------------------------------


def test_job_list_filters_newest_first_and_refuses_bad_filters(client, worker):
    product(client, "JL-1")
    receive(client, "JL-1", "L1", 3, 30)
    paid = [sale(client, f"S-JL-{i}", [("JL-1", 1)]) for i in range(3)]
    short = sale(client, "S-JL-SHORT", [("JL-1", 5)])
    jobs = [pay(client, s["id"]) for s in paid] + [pay(client, short["id"])]
    finished = [wait_for_job(client, j["id"]) for j in jobs]
    assert [j["status"] for j in finished] == ["succeeded"] * 3 + ["failed"]

    everything = _walk(client, page_size=2)
    ids = [j["id"] for j in everything]
    assert ids[:4] == [j["id"] for j in reversed(jobs)], "newest first"

    failed = _page(client, status="failed")["results"]
    assert [j["id"] for j in failed] == [jobs[-1]["id"]]
    assert failed[0]["error"]["code"] == "insufficient_stock"
    assert [j["id"] for j in _page(client, error_code="insufficient_stock")["results"]] == [
        jobs[-1]["id"]
    ]
    assert [j["id"] for j in _page(client, sale_id=paid[1]["id"])["results"]] == [jobs[1]["id"]]
    rid = finished[0]["request_id"]
    assert [j["id"] for j in _page(client, request_id=rid)["results"]] == [jobs[0]["id"]]
    # Halfway between the 2nd and the 3rd job (the API shows milliseconds).
    second, third = (datetime.fromisoformat(finished[i]["created_at"]) for i in (1, 2))
    middle = (second + (third - second) / 2).isoformat()
    assert {j["id"] for j in _page(client, created_after=middle)["results"]} == {
        jobs[2]["id"],
        jobs[3]["id"],
    }
    assert {j["id"] for j in _page(client, created_before=middle)["results"]} == {
        jobs[0]["id"],
        jobs[1]["id"],
    }
    assert [j["id"] for j in _page(client, kind="sale.refund")["results"]] == []

    for bad in ({"status": "lost"}, {"page_size": "many"}, {"created_after": "yesterday"}):
        r = client.get("/api/jobs", params=bad)
        assert r.status_code == 422, (bad, r.status_code, r.text)
    assert client.get("/api/jobs", params={"cursor": "not-a-cursor"}).status_code in (
        400,
        422,
    )


def test_cursor_pages_are_stable_while_jobs_are_inserted(client, token, live_server):
    product(client, "JL-CUR")
    receive(client, "JL-CUR", "L1", 100, 30)
    first = [pay(client, sale(client, f"S-CUR-{i}", [("JL-CUR", 1)])["id"]) for i in range(7)]

    page = _page(client, page_size=3)
    seen = [j["id"] for j in page["results"]]
    # Concurrent writers: new jobs land while the client walks the pages.
    stop = threading.Event()
    inserted: list[str] = []

    def writer():
        with Client(live_server.url, token, timeout=30) as c:
            i = 0
            while not stop.is_set() and i < 6:
                inserted.append(pay(c, sale(c, f"S-CUR-NEW-{i}", [("JL-CUR", 1)])["id"])["id"])
                i += 1

    t = threading.Thread(target=writer)
    t.start()
    while page["next"]:
        page = ok(client.get(page["next"]), 200)
        seen += [j["id"] for j in page["results"]]
    stop.set()
    t.join(30)

    original = [j["id"] for j in reversed(first)]
    assert [i for i in seen if i not in inserted] == original, "no row skipped or repeated"
    assert len(seen) == len(set(seen))


def test_job_list_needs_the_read_scope(live_server, transactional_db):
    with _client(live_server, scopes.SALES_WRITE) as c:
        r = c.get("/api/jobs")
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


# --- operator actions ----------------------------------------------------------------------


def test_retry_runs_a_job_that_failed_with_error_again_once_audited(
    client, live_server, operator, worker, reject_paid
):
    product(client, "JR-1")
    receive(client, "JR-1", "L1", 5, 30)
    s = sale(client, "S-JR-1", [("JR-1", 2)])
    reject_paid("S-JR-1")
    job = pay(client, s["id"])
    failed = wait_for_job(client, job["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "error"

    # Without the scope: refused and audited, nothing changes.
    with _client(live_server, scopes.READ) as reader:
        r = reader.post(f"/api/jobs/{job['id']}/retry")
        assert r.status_code == 403
    assert ok(api.job(client, job["id"]), 200)["status"] == "failed"

    faults.allow_paid()  # the fault is repaired; the operator retries
    r = operator.post(f"/api/jobs/{job['id']}/retry", headers={"X-Request-ID": "ops-retry-1"})
    retried = ok(r, 202)["job"]
    assert retried["id"] == job["id"] and retried["status"] == "queued"
    assert retried["request_id"] == failed["request_id"], "the job keeps its own request id"
    done = wait_for_job(client, job["id"])
    assert done["status"] == "succeeded"
    assert done["attempts"] == failed["attempts"] + 1, "attempts continue"
    assert ok(api.get_sale(client, s["id"]), 200)["status"] == "paid"
    assert StockMove.objects.filter(sale_line__sale_id=s["id"]).count() == 1, "effect once"

    audit = list(
        AuditEntry.objects.filter(action="job.retry")
        .order_by("created_at")
        .values_list("token_name", "request_id", "outcome", "status_code", "job_id")
    )
    assert audit[0][2:4] == ("forbidden", 403)
    assert audit[1] == ("night-operator", "ops-retry-1", "accepted", 202, audit[1][4])
    assert str(audit[1][4]) == job["id"]

    # A job that succeeded, or failed for a business reason, is not retryable.
    r = operator.post(f"/api/jobs/{job['id']}/retry")
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_retryable"
    short = sale(client, "S-JR-SHORT", [("JR-1", 50)])
    short_job = wait_for_job(client, pay(client, short["id"])["id"])
    assert short_job["error"]["code"] == "insufficient_stock"
    r = operator.post(f"/api/jobs/{short_job['id']}/retry")
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_retryable"
    assert ok(api.job(client, short_job["id"]), 200)["status"] == "failed"


def test_resend_publishes_a_stuck_job_now_and_refuses_a_finished_one(
    client, operator, worker_factory
):
    product(client, "JS-1")
    receive(client, "JS-1", "L1", 5, 30)
    s = sale(client, "S-JS-1", [("JS-1", 1)])
    job = pay(client, s["id"])
    # The broker lost the message (no beat runs here: nothing would re-send it).
    faults.lose_queued_messages()
    worker_factory()
    resent = ok(operator.post(f"/api/jobs/{job['id']}/resend"), 202)["job"]
    assert resent["id"] == job["id"]
    assert wait_for_job(client, job["id"], timeout=15)["status"] == "succeeded"

    r = operator.post(f"/api/jobs/{job['id']}/resend")
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_retryable"
    missing = operator.post("/api/jobs/00000000-0000-0000-0000-000000000000/resend")
    assert missing.status_code == 404
