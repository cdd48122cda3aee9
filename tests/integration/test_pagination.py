"""GET /api/stock and GET /api/leads page the same way as GET /api/jobs (api/pagination.py):
`{"results", "next", "previous"}`, cursors stable while rows are added, bad cursors 422."""

from harness.client import Client
from stockflow.accounts import scopes
from stockflow.accounts.models import ApiToken
from stockflow.leads.models import Lead
from tests.api_helpers import ok, product, receive


def walk(client, path, **params) -> list[dict]:
    page, rows = ok(client.get(path, params=params), 200), []
    while True:
        rows += page["results"]
        if not page["next"]:
            return rows
        page = ok(client.get(page["next"]), 200)


def test_stock_pages_in_receipt_order_and_a_new_batch_lands_at_the_end(client):
    product(client, "PG-1")
    for i in range(7):
        receive(client, "PG-1", f"L{i}", 1 + i, 30)
    first = ok(client.get("/api/stock", params={"sku": "PG-1", "page_size": 3}), 200)
    assert len(first["results"]) == 3 and first["previous"] is None and first["next"]
    receive(client, "PG-1", "L-LATE", 5, 30)  # while the client is between pages
    rest = ok(client.get(first["next"]), 200)
    lots = [r["lot"] for r in first["results"] + rest["results"]]
    assert lots == ["L0", "L1", "L2", "L3", "L4", "L5"]
    everything = walk(client, "/api/stock", sku="PG-1", page_size=3)
    assert [r["lot"] for r in everything] == [f"L{i}" for i in range(7)] + ["L-LATE"]
    assert [r["on_hand"] for r in everything[:3]] == [1, 2, 3]


def test_leads_page_newest_first_and_new_leads_do_not_shift_the_walk(live_server, db):
    for i in range(5):
        Lead.objects.create(name=f"Lead {i}", email=f"l{i}@example.com", client_hash="x")
    _, raw = ApiToken.issue("crm", [scopes.LEADS_READ])
    with Client(live_server.url, raw, timeout=30) as c:
        first = ok(c.get("/api/leads", params={"page_size": 2}), 200)
        Lead.objects.create(name="Newest", email="new@example.com", client_hash="x")
        seen = [r["name"] for r in first["results"]]
        page = first
        while page["next"]:
            page = ok(c.get(page["next"]), 200)
            seen += [r["name"] for r in page["results"]]
        assert seen == ["Lead 4", "Lead 3", "Lead 2", "Lead 1", "Lead 0"]
        assert ok(c.get("/api/leads"), 200)["results"][0]["name"] == "Newest"


def test_a_cursor_that_is_not_ours_is_422(client):
    for cursor in ("%%%", "cD1ub3QtYS1kYXRl"):  # not base64; a position that is no date
        r = client.get("/api/jobs", params={"cursor": cursor})
        assert r.status_code == 422, (cursor, r.status_code, r.text)
    r = client.get("/api/stock", params={"page_size": 0})
    assert r.status_code == 422
