"""sale.paid through the real stack: API -> job -> Celery worker process -> PostgreSQL.

FEFO allocation, expired stock, and all-or-nothing failures, asserted both through the
API (what a caller sees) and through the ORM (what was written)."""

import datetime

import pytest
from django.utils import timezone

from stockflow.stock.models import Job, Location, Refund, Sale, SaleLine, StockMove, StockOnHand
from tests.api_helpers import ok, on_hand, pay, pay_and_wait, product, receive, sale, wait_for_job


@pytest.fixture
def worker(module_worker):
    return module_worker


def sale_out_moves(sale_id: int) -> list[tuple[int, str, int]]:
    """[(sale_line_id, lot, quantity consumed)] of a sale's SALE_OUT moves, in insertion order."""
    return [
        (m.sale_line_id, m.batch.lot, -m.quantity)
        for m in StockMove.objects.filter(sale_line__sale_id=sale_id, kind=StockMove.Kind.SALE_OUT)
        .select_related("batch")
        .order_by("id")
    ]


def world() -> dict:
    """Everything the stock jobs can write, to prove a failure wrote nothing."""
    return {
        "moves": list(
            StockMove.objects.order_by("id").values_list("id", "kind", "batch_id", "quantity")
        ),
        "on_hand": dict(StockOnHand.objects.values_list("batch_id", "quantity")),
        "sales": dict(Sale.objects.values_list("id", "status")),
        "paid_at": dict(Sale.objects.values_list("id", "paid_at")),
        "refunds": Refund.objects.count(),
    }


def assert_failed_and_nothing_written(
    client, sale_id: int, before: dict, code: str, short: list[dict]
):
    """The paid job failed with `code`, its result lists exactly the `short` lines, and the
    database is exactly as it was before the request."""
    job = pay_and_wait(client, sale_id)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == code, job
    assert job["error"]["message"]
    details = job["result"]["details"]
    got = sorted(
        ({k: d[k] for k in ("sale_line_id", "requested", "missing")} for d in details),
        key=lambda d: d["sale_line_id"],
    )
    assert got == sorted(short, key=lambda d: d["sale_line_id"]), details
    assert job["attempts"] == 1, job  # a business failure is never retried

    assert sale_out_moves(sale_id) == []
    assert world() == before
    body = ok(client.get(f"/api/sales/{sale_id}"), 200)
    assert body["status"] == before["sales"][sale_id]
    assert body["moves"] == []
    return job


def test_consumes_earliest_expiry_first_and_skips_expired(client, worker):
    product(client, "ASP")
    receive(client, "ASP", "EXPIRED", 10, -1)
    receive(client, "ASP", "LATE", 10, 300)
    receive(client, "ASP", "EARLY", 4, 30)
    receive(client, "ASP", "NEVER", 10, None)

    s = sale(client, "S-1", [("ASP", 7)])
    job = pay_and_wait(client, s["id"])

    assert job["status"] == "succeeded", job
    assert job["result"]["outcome"] == "success"
    assert on_hand(client, "ASP") == {"EXPIRED": 10, "EARLY": 0, "LATE": 7, "NEVER": 10}
    body = ok(client.get(f"/api/sales/{s['id']}"), 200)
    assert body["status"] == "paid"
    line_id = s["lines"][0]["id"]
    assert sale_out_moves(s["id"]) == [(line_id, "EARLY", 4), (line_id, "LATE", 3)]
    assert sorted((m["lot"], m["quantity"]) for m in body["moves"]) == [("EARLY", -4), ("LATE", -3)]
    # The moves carry the job that wrote them.
    assert {m["job_id"] for m in body["moves"]} == {job["id"]}


def test_the_callers_request_id_reaches_the_job_and_its_moves(client, worker):
    product(client, "RID")
    receive(client, "RID", "A", 5, 30)
    s = sale(client, "S-RID", [("RID", 2)])
    rid = "order-4711-checkout"
    r = client.post(
        f"/api/sales/{s['id']}/transition",
        json={"to_status": "paid"},
        headers={"X-Request-ID": rid},
    )
    assert r.status_code == 202 and r.headers["X-Request-ID"] == rid
    job = wait_for_job(client, r.json()["job"]["id"])
    assert job["status"] == "succeeded"
    assert job["request_id"] == rid
    assert set(
        StockMove.objects.filter(sale_line__sale_id=s["id"]).values_list("request_id", flat=True)
    ) == {rid}
    line = ok(client.get(f"/api/sales/{s['id']}"), 200)["lines"][0]
    assert line["unit_price"] == "9.99" and line["quantity"] == 2 and line["refunded"] == 0


def test_never_expiring_stock_is_used_last(client, worker):
    product(client, "NVR")
    receive(client, "NVR", "NEVER", 10, None)
    receive(client, "NVR", "FAR", 2, 3000)

    s = sale(client, "S-NVR", [("NVR", 5)])
    assert pay_and_wait(client, s["id"])["status"] == "succeeded"
    assert on_hand(client, "NVR") == {"FAR": 0, "NEVER": 7}


def test_batch_expiring_today_is_still_sellable_but_yesterday_is_not(client, worker):
    # Locations created by receipts use UTC: "today" is the UTC date.
    today = timezone.now().date()
    product(client, "TDY")
    for lot, expires in (("YESTERDAY", today - datetime.timedelta(days=1)), ("TODAY", today)):
        ok(
            client.post(
                "/api/receipts",
                json={
                    "sku": "TDY",
                    "location": "MAIN",
                    "lot": lot,
                    "quantity": 3,
                    "expires_on": expires.isoformat(),
                },
            ),
            201,
        )

    s = sale(client, "S-TDY", [("TDY", 3)])
    assert pay_and_wait(client, s["id"])["status"] == "succeeded"
    assert on_hand(client, "TDY") == {"YESTERDAY": 3, "TODAY": 0}


def test_only_expired_stock_would_cover_the_line_is_expired_batch_and_writes_nothing(
    client, worker
):
    product(client, "EXP")
    receive(client, "EXP", "OLD", 10, -1)
    receive(client, "EXP", "FRESH", 2, 30)
    s = sale(client, "S-EXP", [("EXP", 5)])
    before = world()

    job = assert_failed_and_nothing_written(
        client,
        s["id"],
        before,
        "expired_batch",
        [{"sale_line_id": s["lines"][0]["id"], "requested": 5, "missing": 3}],
    )
    assert job["result"]["details"][0]["sku"] == "EXP"
    assert on_hand(client, "EXP") == {"OLD": 10, "FRESH": 2}


def test_short_even_counting_expired_stock_is_insufficient_stock_and_writes_nothing(client, worker):
    product(client, "SHORT")
    receive(client, "SHORT", "OLD", 1, -2)
    receive(client, "SHORT", "FRESH", 2, 30)
    s = sale(client, "S-SHORT", [("SHORT", 5)])
    ok(client.post(f"/api/sales/{s['id']}/transition", json={"to_status": "pending"}), 200)
    before = world()
    assert before["sales"][s["id"]] == "pending"

    assert_failed_and_nothing_written(
        client,
        s["id"],
        before,
        "insufficient_stock",
        [{"sale_line_id": s["lines"][0]["id"], "requested": 5, "missing": 3}],
    )
    assert on_hand(client, "SHORT") == {"OLD": 1, "FRESH": 2}


def test_no_stock_at_all_is_insufficient_stock(client, worker):
    product(client, "NONE")
    Location.objects.get_or_create(code="MAIN")  # locations are created by receipts; none here
    s = sale(client, "S-NONE", [("NONE", 1)])
    before = world()
    assert_failed_and_nothing_written(
        client,
        s["id"],
        before,
        "insufficient_stock",
        [{"sale_line_id": s["lines"][0]["id"], "requested": 1, "missing": 1}],
    )


def test_stock_at_another_location_is_not_sold(client, worker):
    product(client, "LOC")
    receive(client, "LOC", "THERE", 50, 30, location="BRANCH")
    receive(client, "LOC", "HERE", 1, 30, location="MAIN")
    s = sale(client, "S-LOC", [("LOC", 2)], location="MAIN")
    before = world()
    assert_failed_and_nothing_written(
        client,
        s["id"],
        before,
        "insufficient_stock",
        [{"sale_line_id": s["lines"][0]["id"], "requested": 2, "missing": 1}],
    )


def test_multi_line_sale_is_all_or_nothing(client, worker):
    product(client, "OK1")
    product(client, "SHORT2")
    receive(client, "OK1", "A", 10, 30)
    receive(client, "SHORT2", "B", 1, 30)
    s = sale(client, "S-MULTI", [("OK1", 5), ("SHORT2", 3)])
    line1, line2 = (line["id"] for line in s["lines"])
    before = world()

    # Only the short line is listed; the coverable first line wrote nothing either.
    assert_failed_and_nothing_written(
        client,
        s["id"],
        before,
        "insufficient_stock",
        [{"sale_line_id": line2, "requested": 3, "missing": 2}],
    )
    assert on_hand(client, "OK1") == {"A": 10}
    assert on_hand(client, "SHORT2") == {"B": 1}
    assert StockMove.objects.filter(sale_line_id=line1).count() == 0

    # Once the shortage is fixed the same sale pays in full.
    receive(client, "SHORT2", "B2", 5, 60)
    job = pay_and_wait(client, s["id"])
    assert job["status"] == "succeeded", job
    assert sale_out_moves(s["id"]) == [(line1, "A", 5), (line2, "B", 1), (line2, "B2", 2)]


def test_every_short_line_is_listed(client, worker):
    product(client, "X1")
    product(client, "X2")
    receive(client, "X1", "A", 1, 30)
    s = sale(client, "S-BOTH", [("X1", 4), ("X2", 2)])
    line1, line2 = (line["id"] for line in s["lines"])
    assert_failed_and_nothing_written(
        client,
        s["id"],
        world(),
        "insufficient_stock",
        [
            {"sale_line_id": line1, "requested": 4, "missing": 3},
            {"sale_line_id": line2, "requested": 2, "missing": 2},
        ],
    )


def test_two_lines_of_one_sku_draw_from_one_running_balance(client, worker):
    product(client, "DUP")
    receive(client, "DUP", "EARLY", 3, 10)
    receive(client, "DUP", "LATE", 5, 20)
    s = sale(client, "S-DUP", [("DUP", 2), ("DUP", 4)])
    line1, line2 = (line["id"] for line in s["lines"])

    job = pay_and_wait(client, s["id"])
    assert job["status"] == "succeeded", job
    # Line 2 sees what line 1 left of EARLY, not the 3 that were there before.
    assert sale_out_moves(s["id"]) == [(line1, "EARLY", 2), (line2, "EARLY", 1), (line2, "LATE", 3)]
    assert on_hand(client, "DUP") == {"EARLY": 0, "LATE": 2}


def test_two_lines_of_one_sku_that_fit_alone_but_not_together_write_nothing(client, worker):
    product(client, "DUP2")
    receive(client, "DUP2", "EARLY", 3, 10)
    receive(client, "DUP2", "LATE", 5, 20)
    s = sale(client, "S-DUP2", [("DUP2", 5), ("DUP2", 4)])  # 5 <= 8 and 4 <= 8, but 9 > 8
    line2 = s["lines"][1]["id"]
    assert_failed_and_nothing_written(
        client,
        s["id"],
        world(),
        "insufficient_stock",
        [{"sale_line_id": line2, "requested": 4, "missing": 1}],
    )
    assert on_hand(client, "DUP2") == {"EARLY": 3, "LATE": 5}


def test_paying_a_paid_sale_again_is_rejected_and_writes_nothing(client, worker):
    product(client, "TWICE")
    receive(client, "TWICE", "A", 5, 30)
    s = sale(client, "S-TWICE", [("TWICE", 2)])
    assert pay_and_wait(client, s["id"])["status"] == "succeeded"
    before = world()
    jobs_before = Job.objects.count()

    r = client.post(f"/api/sales/{s['id']}/transition", json={"to_status": "paid"})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "invalid_transition"
    assert world() == before
    assert Job.objects.count() == jobs_before
    assert SaleLine.objects.filter(sale_id=s["id"]).count() == 1
    assert on_hand(client, "TWICE") == {"A": 3}


def test_duplicate_paid_requests_share_one_job(client, worker):
    product(client, "ONCE")
    receive(client, "ONCE", "A", 5, 30)
    s = sale(client, "S-ONCE", [("ONCE", 2)])
    first = pay(client, s["id"], **{"Idempotency-Key": "pay-1"})
    again = pay(client, s["id"], **{"Idempotency-Key": "pay-1"})
    assert again["id"] == first["id"]
    assert wait_for_job(client, first["id"])["status"] == "succeeded"
    # After success the same key still answers with the same (finished) job.
    assert pay(client, s["id"], **{"Idempotency-Key": "pay-1"})["id"] == first["id"]
    assert Job.objects.filter(sale_id=s["id"]).count() == 1
    assert on_hand(client, "ONCE") == {"A": 3}
