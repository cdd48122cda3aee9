"""POST /api/receipts with an Idempotency-Key: a retry (the same key and body) answers
with the first receipt and counts nothing twice, even when the copies race; the same key
with another body is 409 `idempotency_conflict`; without a key every receipt counts."""

import threading
from concurrent.futures import ThreadPoolExecutor

from django.db.models import Sum

from stockflow.stock.models import StockMove, StockOnHand
from tests.api_helpers import ok, on_hand, product, receive

THREADS = 8  # the live server is threaded: each copy has its own connection

BODY = {"sku": "RCV", "location": "MAIN", "lot": "L1", "expires_on": None, "quantity": 7}


def post_receipt(client, body: dict, key: str | None = None):
    headers = {"Idempotency-Key": key} if key else {}
    return client.post("/api/receipts", json=body, headers=headers)


def race(n: int, call) -> list:
    """`call()` from n threads released at once."""
    start = threading.Barrier(n)

    def one(_):
        start.wait(timeout=30)
        return call()

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def receipts() -> list[tuple]:
    return list(
        StockMove.objects.filter(kind=StockMove.Kind.RECEIPT)
        .order_by("id")
        .values_list("id", "batch__lot", "quantity")
    )


def assert_ledger_matches_on_hand():
    moved = dict(
        StockMove.objects.values("batch_id")
        .annotate(s=Sum("quantity"))
        .values_list("batch_id", "s")
    )
    assert dict(StockOnHand.objects.values_list("batch_id", "quantity")) == moved


def test_a_retried_receipt_is_counted_once_and_answered_the_same(client):
    product(client, "RCV")
    first = ok(post_receipt(client, BODY, "rcpt-1"), 201)
    # Stock moves in between (a receipt without a key): the retry's answer is still the
    # first answer, on-hand as that receipt left it.
    receive(client, "RCV", "L1", 3, None)
    again = ok(post_receipt(client, BODY, "rcpt-1"), 201)

    assert again == first
    assert first["on_hand"] == 7
    assert len(receipts()) == 2  # the keyed receipt once, plus the one without a key
    assert on_hand(client, "RCV") == {"L1": 10}
    assert_ledger_matches_on_hand()


def test_without_a_key_every_receipt_counts(client):
    product(client, "RCV")
    a = ok(post_receipt(client, BODY), 201)
    b = ok(post_receipt(client, BODY), 201)
    assert a["move_id"] != b["move_id"]
    assert (a["on_hand"], b["on_hand"]) == (7, 14)
    assert on_hand(client, "RCV") == {"L1": 14}


def test_the_same_key_with_another_body_is_409_and_writes_nothing(client):
    product(client, "RCV")
    first = ok(post_receipt(client, BODY, "rcpt-2"), 201)
    before = receipts()
    for other in (
        BODY | {"quantity": 8},
        BODY | {"lot": "L2"},
        BODY | {"location": "BACK"},
        BODY | {"expires_on": "2031-01-01", "lot": "L3"},
    ):
        r = post_receipt(client, other, "rcpt-2")
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "idempotency_conflict", r.text
    assert receipts() == before
    assert on_hand(client, "RCV") == {"L1": 7}
    # The key still answers with its own receipt.
    assert ok(post_receipt(client, BODY, "rcpt-2"), 201) == first


def test_concurrent_copies_of_one_receipt_make_one(client):
    product(client, "RCV")
    receive(client, "RCV", "OLD", 1, None)  # an existing lot, and below a new one
    for lot, key in (("OLD", "race-old"), ("NEW", "race-new")):
        answers = race(THREADS, lambda: post_receipt(client, BODY | {"lot": lot}, key))  # noqa: B023
        assert {r.status_code for r in answers} == {201}, [r.text for r in answers]
        bodies = [r.json() for r in answers]
        assert all(b == bodies[0] for b in bodies), bodies
    assert [(lot, q) for _, lot, q in receipts()] == [("OLD", 1), ("OLD", 7), ("NEW", 7)]
    assert on_hand(client, "RCV") == {"OLD": 8, "NEW": 7}
    assert_ledger_matches_on_hand()
