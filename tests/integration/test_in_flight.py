"""A sale with a PAID job in flight (queued or running) changes only through that job:
any other transition is 409 `job_in_flight`, and so is a PAID request under another
Idempotency-Key. The job is held `queued` by starting no worker until the test says so."""

from stockflow.accounts.models import AuditEntry
from stockflow.stock.models import Job, Location, Sale, StockMove
from tests.api_helpers import ok, pay, product, receive, sale, wait_for_job


def assert_error(r, status: int, code: str) -> dict:
    assert r.status_code == status, f"{r.status_code}: {r.text}"
    err = r.json()["error"]
    assert err["code"] == code, err
    assert err["request_id"] == r.headers["X-Request-ID"]
    return err


def transition(client, sale_id: int, to_status: str, **headers):
    return client.post(
        f"/api/sales/{sale_id}/transition", json={"to_status": to_status}, headers=headers
    )


def sale_row(sale_id: int) -> tuple:
    s = Sale.objects.get(pk=sale_id)
    return s.status, s.updated_at, s.paid_at


def test_transition_while_paid_job_is_queued_is_409_and_changes_nothing(client, worker_factory):
    product(client, "INF")
    receive(client, "INF", "A", 5, 30)
    s = sale(client, "S-INF", [("INF", 2)])
    job = pay(client, s["id"])  # no worker yet: the job stays queued
    before = sale_row(s["id"])

    for to in ("cancelled", "pending"):
        err = assert_error(transition(client, s["id"], to), 409, "job_in_flight")
        assert job["id"] in err["message"], err
    assert sale_row(s["id"]) == before
    assert Job.objects.get(pk=job["id"]).status == "queued"
    refused = AuditEntry.objects.filter(sale_id=s["id"], outcome="job_in_flight")
    assert refused.count() == 2  # refusals are audited like any other

    # A repeated `paid` (no key) still answers with the job in flight, not a new one.
    assert pay(client, s["id"])["id"] == job["id"]
    assert Job.objects.filter(sale_id=s["id"]).count() == 1

    worker_factory()
    assert wait_for_job(client, job["id"])["status"] == "succeeded"
    # Finished: the sale is paid, and cancelling it is refused as before.
    assert_error(transition(client, s["id"], "cancelled"), 409, "invalid_transition")
    assert Sale.objects.get(pk=s["id"]).status == "paid"


def test_paid_under_another_key_while_one_is_in_flight_is_409(client, worker_factory):
    product(client, "KEYS")
    receive(client, "KEYS", "A", 5, 30)
    s = sale(client, "S-KEYS", [("KEYS", 2)])
    first = pay(client, s["id"], key="pay-a")

    err = assert_error(
        transition(client, s["id"], "paid", **{"Idempotency-Key": "pay-b"}), 409, "job_in_flight"
    )
    assert first["id"] in err["message"], err
    # The same key, or no key, still answers with the job in flight.
    assert pay(client, s["id"], key="pay-a")["id"] == first["id"]
    assert pay(client, s["id"])["id"] == first["id"]
    assert list(Job.objects.filter(sale_id=s["id"]).values_list("idempotency_key", flat=True)) == [
        "pay-a"
    ]

    worker_factory()
    assert wait_for_job(client, first["id"])["status"] == "succeeded"
    # Key b was never bound to anything: once the sale is paid it is refused as any
    # `paid` for a paid sale is, and key a still answers with its job.
    assert_error(
        transition(client, s["id"], "paid", **{"Idempotency-Key": "pay-b"}),
        409,
        "invalid_transition",
    )
    assert pay(client, s["id"], key="pay-a")["id"] == first["id"]
    assert StockMove.objects.filter(sale_line__sale_id=s["id"]).count() == 1


def test_after_a_failed_paid_job_the_sale_can_be_cancelled(client, worker_factory):
    product(client, "SHORT")
    Location.objects.create(code="MAIN")
    s = sale(client, "S-SHORT", [("SHORT", 2)])  # no stock at all: the job will fail
    job = pay(client, s["id"], key="pay-short")
    assert_error(transition(client, s["id"], "cancelled"), 409, "job_in_flight")

    worker_factory()
    assert wait_for_job(client, job["id"])["error"]["code"] == "insufficient_stock"
    cancelled = ok(transition(client, s["id"], "cancelled"), 200)
    assert cancelled["status"] == "cancelled"
    # The failed job's key still answers with that job; the cancelled sale is not paid.
    assert pay(client, s["id"], key="pay-short")["id"] == job["id"]
    assert Sale.objects.get(pk=s["id"]).status == "cancelled"
