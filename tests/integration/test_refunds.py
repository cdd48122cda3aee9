"""sale.refund through the real stack: full and partial refunds, over-refund, idempotency."""

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from stockflow.stock.models import Job, Refund, RefundLine, Sale, StockMove, StockOnHand
from tests.api_helpers import (
    ok,
    on_hand,
    pay_and_wait,
    product,
    receive,
    refund,
    sale,
    wait_for_job,
)


@pytest.fixture
def worker(module_worker):
    return module_worker


def world() -> dict:
    return {
        "moves": list(
            StockMove.objects.order_by("id").values_list("id", "kind", "batch_id", "quantity")
        ),
        "on_hand": dict(StockOnHand.objects.values_list("batch_id", "quantity")),
        "sales": dict(Sale.objects.values_list("id", "status")),
        "refunds": Refund.objects.count(),
        "refund_lines": RefundLine.objects.count(),
        "jobs": Job.objects.count(),
    }


def moves_of(sale_id: int, kind: str) -> Counter:
    """Counter{(sale_line_id, lot): quantity moved} of one kind of move for one sale."""
    qs = StockMove.objects.filter(kind=kind).select_related("batch", "refund_line")
    if kind == StockMove.Kind.SALE_OUT:
        qs = qs.filter(sale_line__sale_id=sale_id)
        return Counter({(m.sale_line_id, m.batch.lot): -m.quantity for m in qs})
    qs = qs.filter(refund_line__refund__sale_id=sale_id)
    c = Counter()
    for m in qs:
        c[(m.refund_line.sale_line_id, m.batch.lot)] += m.quantity
    return c


def result_moves(job: dict) -> list[tuple[int, str, int]]:
    lots = dict(StockOnHand.objects.values_list("batch_id", "batch__lot"))
    return [(m["sale_line_id"], lots[m["batch_id"]], m["quantity"]) for m in job["result"]["moves"]]


def status_of(client, sale_id: int) -> str:
    return ok(client.get(f"/api/sales/{sale_id}"), 200)["status"]


def refund_and_wait(client, sale_id: int, key: str, kind="full", lines=None) -> dict:
    r = refund(client, sale_id, key, kind, lines)
    assert r.status_code == 202, r.text
    assert r.headers["Location"] == f"/api/jobs/{r.json()['job']['id']}"
    return wait_for_job(client, r.json()["job"]["id"])


def assert_error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    assert err["request_id"] == r.headers["X-Request-ID"]
    return err


@pytest.fixture
def paid_sale(client, worker):
    """Line A (6 units) consumed EARLY 2, MID 3, LATE 1; line B (2 units) consumed B1 2."""
    product(client, "RA")
    product(client, "RB")
    receive(client, "RA", "EARLY", 2, 10)
    receive(client, "RA", "MID", 3, 20)
    receive(client, "RA", "LATE", 10, 30)
    receive(client, "RB", "B1", 5, 30)
    s = sale(client, "S-R", [("RA", 6), ("RB", 2)])
    job = pay_and_wait(client, s["id"])
    assert job["status"] == "succeeded", job
    line_a, line_b = (line["id"] for line in s["lines"])
    assert moves_of(s["id"], "SALE_OUT") == Counter(
        {(line_a, "EARLY"): 2, (line_a, "MID"): 3, (line_a, "LATE"): 1, (line_b, "B1"): 2}
    )
    return {"id": s["id"], "a": line_a, "b": line_b}


def test_full_refund_restores_the_exact_batches_of_the_sale(client, paid_sale):
    sid = paid_sale["id"]
    job = refund_and_wait(client, sid, "full-1")

    assert job["status"] == "succeeded", job
    assert job["result"]["sale_status"] == "refunded"
    # Exact reversal: same line, same batch, same quantity as every SALE_OUT move.
    assert moves_of(sid, "REFUND_IN") == moves_of(sid, "SALE_OUT")
    assert on_hand(client, "RA") == {"EARLY": 2, "MID": 3, "LATE": 10}
    assert on_hand(client, "RB") == {"B1": 5}
    body = ok(client.get(f"/api/sales/{sid}"), 200)
    assert body["status"] == "refunded"
    assert {line["id"]: line["refunded"] for line in body["lines"]} == {
        paid_sale["a"]: 6,
        paid_sale["b"]: 2,
    }
    refund_row = Refund.objects.get(sale_id=sid)
    assert refund_row.kind == "full"
    assert dict(refund_row.lines.values_list("sale_line_id", "quantity")) == {
        paid_sale["a"]: 6,
        paid_sale["b"]: 2,
    }
    assert StockMove.objects.filter(kind="REFUND_IN", job_id=job["id"]).count() == 4


def test_partial_refunds_restore_latest_expiry_first_until_refunded(client, paid_sale):
    sid, a, b = paid_sale["id"], paid_sale["a"], paid_sale["b"]

    first = refund_and_wait(client, sid, "p-1", "partial", [{"sale_line_id": a, "quantity": 2}])
    assert first["status"] == "succeeded", first
    # LATE gave 1 to this line, so it gets 1 back; the rest comes from the next-latest, MID.
    assert result_moves(first) == [(a, "LATE", 1), (a, "MID", 1)]
    assert status_of(client, sid) == "partially_refunded"
    assert on_hand(client, "RA") == {"EARLY": 0, "MID": 1, "LATE": 10}

    second = refund_and_wait(client, sid, "p-2", "partial", [{"sale_line_id": a, "quantity": 3}])
    assert second["status"] == "succeeded", second
    assert result_moves(second) == [(a, "MID", 2), (a, "EARLY", 1)]
    assert status_of(client, sid) == "partially_refunded"
    assert on_hand(client, "RA") == {"EARLY": 1, "MID": 3, "LATE": 10}

    last = refund_and_wait(
        client,
        sid,
        "p-3",
        "partial",
        [{"sale_line_id": b, "quantity": 2}, {"sale_line_id": a, "quantity": 1}],
    )
    assert last["status"] == "succeeded", last
    assert sorted(result_moves(last)) == sorted([(a, "EARLY", 1), (b, "B1", 2)])
    assert status_of(client, sid) == "refunded"
    assert on_hand(client, "RA") == {"EARLY": 2, "MID": 3, "LATE": 10}
    assert on_hand(client, "RB") == {"B1": 5}
    # Three refunds, and together they are an exact reversal of the sale.
    assert Refund.objects.filter(sale_id=sid).count() == 3
    assert moves_of(sid, "REFUND_IN") == moves_of(sid, "SALE_OUT")


def test_full_refund_after_a_partial_refunds_only_the_rest(client, paid_sale):
    sid, a, b = paid_sale["id"], paid_sale["a"], paid_sale["b"]
    assert (
        refund_and_wait(client, sid, "p", "partial", [{"sale_line_id": a, "quantity": 4}])["status"]
        == "succeeded"
    )
    job = refund_and_wait(client, sid, "f")
    assert job["status"] == "succeeded", job
    assert dict(
        Refund.objects.get(idempotency_key="f").lines.values_list("sale_line_id", "quantity")
    ) == {a: 2, b: 2}
    assert status_of(client, sid) == "refunded"
    assert moves_of(sid, "REFUND_IN") == moves_of(sid, "SALE_OUT")


def test_one_line_repeated_in_a_refund_is_summed(client, paid_sale):
    sid, a = paid_sale["id"], paid_sale["a"]
    rid = "refund-desk-0001"
    r = client.post(
        f"/api/sales/{sid}/refunds",
        headers={"Idempotency-Key": "rep", "X-Request-ID": rid},
        json={
            "kind": "partial",
            "lines": [{"sale_line_id": a, "quantity": 1}, {"sale_line_id": a, "quantity": 2}],
        },
    )
    assert r.status_code == 202, r.text
    job = wait_for_job(client, r.json()["job"]["id"])
    assert job["status"] == "succeeded", job
    assert list(
        RefundLine.objects.filter(refund__sale_id=sid).values_list("sale_line_id", "quantity")
    ) == [(a, 3)]
    assert result_moves(job) == [(a, "LATE", 1), (a, "MID", 2)]
    assert set(StockMove.objects.filter(kind="REFUND_IN").values_list("request_id", flat=True)) == {
        rid
    }


def test_over_refund_is_refused_at_accept_time_and_writes_nothing(client, paid_sale):
    sid, a = paid_sale["id"], paid_sale["a"]
    assert (
        refund_and_wait(client, sid, "p", "partial", [{"sale_line_id": a, "quantity": 5}])["status"]
        == "succeeded"
    )
    before = world()

    err = assert_error(
        refund(client, sid, "too-much", "partial", [{"sale_line_id": a, "quantity": 2}]),
        422,
        "over_refund",
    )
    assert err["details"] == [{"sale_line_id": a, "requested": 2, "refundable": 1}]
    # One line repeated in a request counts in total: 1 + 1 > 1.
    assert_error(
        refund(
            client,
            sid,
            "split",
            "partial",
            [{"sale_line_id": a, "quantity": 1}, {"sale_line_id": a, "quantity": 1}],
        ),
        422,
        "over_refund",
    )
    assert world() == before
    assert status_of(client, sid) == "partially_refunded"


def test_more_than_sold_in_one_request_is_over_refund(client, paid_sale):
    before = world()
    assert_error(
        refund(
            client,
            paid_sale["id"],
            "k",
            "partial",
            [{"sale_line_id": paid_sale["b"], "quantity": 3}],
        ),
        422,
        "over_refund",
    )
    assert world() == before
    assert status_of(client, paid_sale["id"]) == "paid"


def test_full_refund_of_a_refunded_sale_is_refused(client, paid_sale):
    sid = paid_sale["id"]
    assert refund_and_wait(client, sid, "full-1")["status"] == "succeeded"
    before = world()
    # A new key: not a replay. The sale is `refunded`, so there is nothing left to refund.
    r = refund(client, sid, "full-2")
    assert r.status_code in (409, 422), r.text
    assert r.json()["error"]["code"] in ("invalid_transition", "over_refund")
    assert world() == before


def test_concurrent_partial_refunds_that_together_over_refund(client, worker, shared_worker):
    """Both are accepted (each fits alone), then run together: one wins, the other fails
    `over_refund`, and nothing of the loser is written."""
    product(client, "CC")
    receive(client, "CC", "L1", 3, 10)
    receive(client, "CC", "L2", 3, 20)
    s = sale(client, "S-CC", [("CC", 6)])
    assert pay_and_wait(client, s["id"])["status"] == "succeeded"
    line = s["lines"][0]["id"]
    shared_worker.stop()  # accept both before either runs
    before = world()

    def ask(key):
        return refund(client, s["id"], key, "partial", [{"sale_line_id": line, "quantity": 4}])

    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(ask, ["c-1", "c-2"]))
    assert [r.status_code for r in responses] == [202, 202], [r.text for r in responses]
    job_ids = [r.json()["job"]["id"] for r in responses]
    assert len(set(job_ids)) == 2

    shared_worker.get()  # a fresh worker, concurrency 2: both deliveries run at once
    jobs = [wait_for_job(client, j) for j in job_ids]
    assert sorted(j["status"] for j in jobs) == ["failed", "succeeded"], jobs
    won = next(j for j in jobs if j["status"] == "succeeded")
    lost = next(j for j in jobs if j["status"] == "failed")
    assert lost["error"]["code"] == "over_refund", lost
    assert lost["result"]["details"] == [{"sale_line_id": line, "requested": 4, "refundable": 2}]
    assert lost["attempts"] == 1

    assert Refund.objects.filter(sale_id=s["id"]).count() == 1
    assert Refund.objects.get(sale_id=s["id"]).job_id is not None
    assert str(Refund.objects.get(sale_id=s["id"]).job_id) == won["id"]
    assert sum(moves_of(s["id"], "REFUND_IN").values()) == 4
    assert StockMove.objects.filter(job_id=lost["id"]).count() == 0
    assert len(StockMove.objects.all()) == len(before["moves"]) + len(won["result"]["moves"])
    assert sum(on_hand(client, "CC").values()) == 4
    assert status_of(client, s["id"]) == "partially_refunded"


def test_same_key_same_body_returns_the_same_job(client, paid_sale):
    sid, a = paid_sale["id"], paid_sale["a"]
    body_lines = [
        {"sale_line_id": a, "quantity": 1},
        {"sale_line_id": paid_sale["b"], "quantity": 1},
    ]
    first = refund(client, sid, "same", "partial", body_lines)
    again = refund(
        client, sid, "same", "partial", list(reversed(body_lines))
    )  # same body, other line order
    assert first.status_code == 202 and again.status_code == 202, (first.text, again.text)
    assert again.json()["job"]["id"] == first.json()["job"]["id"]

    job = wait_for_job(client, first.json()["job"]["id"])
    assert job["status"] == "succeeded", job
    moves_after_first = world()["moves"]

    # After the job finished: still the same job, nothing new written.
    late = refund(client, sid, "same", "partial", body_lines)
    assert late.status_code == 202, late.text
    assert late.json()["job"]["id"] == job["id"]
    assert late.json()["job"]["status"] == "succeeded"
    assert Refund.objects.filter(sale_id=sid).count() == 1
    assert Job.objects.filter(sale_id=sid, kind="sale.refund").count() == 1
    assert world()["moves"] == moves_after_first
    assert sum(moves_of(sid, "REFUND_IN").values()) == 2


def test_same_key_other_body_is_an_idempotency_conflict(client, paid_sale):
    sid, a = paid_sale["id"], paid_sale["a"]
    first = refund(client, sid, "k1", "partial", [{"sale_line_id": a, "quantity": 1}])
    assert first.status_code == 202, first.text
    wait_for_job(client, first.json()["job"]["id"])
    before = world()

    assert_error(
        refund(client, sid, "k1", "partial", [{"sale_line_id": a, "quantity": 2}]),
        409,
        "idempotency_conflict",
    )
    assert_error(refund(client, sid, "k1", "full"), 409, "idempotency_conflict")
    assert world() == before


def test_refund_without_idempotency_key_is_400(client, paid_sale):
    before = world()
    r = client.post(f"/api/sales/{paid_sale['id']}/refunds", json={"kind": "full"})
    assert_error(r, 400, "malformed_request")
    r = client.post(
        f"/api/sales/{paid_sale['id']}/refunds",
        json={"kind": "full"},
        headers={"Idempotency-Key": ""},
    )
    assert_error(r, 400, "malformed_request")
    assert world() == before
    assert status_of(client, paid_sale["id"]) == "paid"


def test_refund_of_an_unpaid_sale_is_invalid_transition(client, worker):
    product(client, "UNP")
    receive(client, "UNP", "A", 5, 30)
    s = sale(client, "S-UNP", [("UNP", 1)])
    before = world()
    assert_error(refund(client, s["id"], "k"), 409, "invalid_transition")
    assert_error(
        refund(
            client, s["id"], "k2", "partial", [{"sale_line_id": s["lines"][0]["id"], "quantity": 1}]
        ),
        409,
        "invalid_transition",
    )
    ok(client.post(f"/api/sales/{s['id']}/transition", json={"to_status": "cancelled"}), 200)
    assert_error(refund(client, s["id"], "k3"), 409, "invalid_transition")
    assert world() | {"sales": None} == before | {"sales": None}
    assert status_of(client, s["id"]) == "cancelled"
