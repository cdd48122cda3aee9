"""Bad input over real HTTP: the right status and error code, the one error shape, a
request id on every answer, never a 500, and nothing written to the database."""

import socket
import uuid
from urllib.parse import urlparse

import pytest

from stockflow.accounts.models import ApiToken
from stockflow.stock.models import (
    Batch,
    Job,
    Location,
    Product,
    Refund,
    RefundLine,
    Sale,
    SaleLine,
    StockMove,
    StockOnHand,
)
from tests.api_helpers import ok, pay_and_wait, product, receive, sale


@pytest.fixture
def worker(module_worker):
    return module_worker


def snapshot() -> dict:
    """Row counts of everything the API can write, plus the state that could change in place."""
    return {
        "counts": {
            m.__name__: m.objects.count()
            for m in (
                Product,
                Location,
                Batch,
                StockOnHand,
                Sale,
                SaleLine,
                Job,
                StockMove,
                Refund,
                RefundLine,
            )
        },
        "on_hand": dict(StockOnHand.objects.values_list("batch_id", "quantity")),
        "sales": dict(Sale.objects.values_list("id", "status")),
        "jobs": dict(Job.objects.values_list("id", "status")),
    }


def assert_error(r, status: int, code: str) -> dict:
    """The one error contract: status, JSON {"error": {code, message, request_id}}, and an
    X-Request-ID header equal to error.request_id. Never a stack trace."""
    assert r.status_code == status, f"{r.status_code}: {r.text}"
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert list(body) == ["error"], body
    err = body["error"]
    assert {"code", "message", "request_id"} <= set(err), err
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"], err
    assert err["request_id"] and r.headers["X-Request-ID"] == err["request_id"]
    assert "Traceback" not in r.text and 'File "' not in r.text
    return err


def fields(err: dict) -> set[str]:
    """The field paths named by a validation error, without the parameter prefix
    ("body.lines.0.quantity" and "lines.0.quantity" both give "lines.0.quantity")."""
    names = set()
    for d in err.get("details") or []:
        name = d["field"]
        while name.startswith("body."):
            name = name[len("body.") :]
        names.add(name)
    return names


def each(cases, check):
    """Run `check` on every case and report every failing one at once (one test, one setup:
    the table of cases stays fast)."""
    problems = []
    for case in cases:
        try:
            check(*case) if isinstance(case, tuple) else check(case)
        except (AssertionError, KeyError, ValueError) as exc:
            problems.append(f"{case!r}: {exc}")
    assert not problems, "\n".join(problems)


@pytest.fixture
def shop(client):
    """A product with stock and a draft sale, written through the API."""
    product(client, "BAD")
    receive(client, "BAD", "L1", 10, 30)
    s = sale(client, "S-BAD", [("BAD", 1)])
    return {"sale": s, "line": s["lines"][0]["id"]}


GOOD_SALE = {
    "number": "S-NEW",
    "location": "MAIN",
    "lines": [{"sku": "BAD", "quantity": 1, "unit_price": "9.99"}],
}


def line(**overrides) -> dict:
    return GOOD_SALE | {"lines": [GOOD_SALE["lines"][0] | overrides]}


# --- 400: not JSON at all --------------------------------------------------------------------


def test_malformed_json_is_400(client, shop):
    before = snapshot()
    sid = shop["sale"]["id"]
    json_ct = {"Content-Type": "application/json"}
    each(
        [b'{"number": "S-1", ', b"not json", b"\xff\xfe\x00", b"{}}", b"[1, 2"],
        lambda raw: assert_error(
            client.post("/api/sales", content=raw, headers=json_ct), 400, "malformed_request"
        ),
    )
    assert_error(
        client.post(f"/api/sales/{sid}/transition", content=b"{to_status: paid}", headers=json_ct),
        400,
        "malformed_request",
    )
    assert_error(
        client.post(
            f"/api/sales/{sid}/refunds",
            content=b"{'kind': 'full'}",
            headers=json_ct | {"Idempotency-Key": "k"},
        ),
        400,
        "malformed_request",
    )
    # An empty body is not JSON either: 400, or 422 "body required"; never a 500.
    r = client.post("/api/sales", content=b"", headers=json_ct)
    assert r.status_code in (400, 422), r.text
    assert_error(r, r.status_code, r.json()["error"]["code"])
    assert snapshot() == before


# --- 422: well-formed JSON, wrong content ----------------------------------------------------


SALE_CASES = [
    (line(quantity="5"), "lines.0.quantity"),  # string quantity
    (line(quantity=1.5), "lines.0.quantity"),
    (line(quantity=True), "lines.0.quantity"),
    (line(unit_price=9.99), "lines.0.unit_price"),  # number, not a decimal string
    (line(unit_price="9.999"), "lines.0.unit_price"),
    (line(unit_price="-1.00"), "lines.0.unit_price"),
    (line(unit_price="NaN"), "lines.0.unit_price"),
    (line(sku=None), "lines.0.sku"),
    (line(sku="has space"), "lines.0.sku"),
    (line(quantity=0), "lines.0.quantity"),  # zero / negative quantities
    (line(quantity=-3), "lines.0.quantity"),
    (line(quantity=10**30), "lines.0.quantity"),
    (GOOD_SALE | {"lines": []}, "lines"),
    (GOOD_SALE | {"lines": "BAD"}, "lines"),
    (GOOD_SALE | {"number": 12}, "number"),
    (GOOD_SALE | {"number": "x" * 65}, "number"),
    ({k: v for k, v in GOOD_SALE.items() if k != "location"}, "location"),
]


def test_wrong_types_and_values_on_sale_are_422_with_field_details(client, shop):
    before = snapshot()

    def check(body, field):
        err = assert_error(client.post("/api/sales", json=body), 422, "validation_error")
        assert field in fields(err), err

    each(SALE_CASES, check)
    assert snapshot() == before


def test_a_body_that_is_not_an_object_is_422(client, shop):
    before = snapshot()

    def check(body):
        err = assert_error(client.post("/api/sales", json=body), 422, "validation_error")
        assert err["details"], err

    each([[GOOD_SALE], "S-NEW", 42, None, True], check)
    assert snapshot() == before


RECEIPT_CASES = [
    ({"sku": "BAD", "location": "MAIN", "lot": "L2", "quantity": 0}, "quantity"),
    ({"sku": "BAD", "location": "MAIN", "lot": "L2", "quantity": -1}, "quantity"),
    ({"sku": "BAD", "location": "MAIN", "lot": "L2", "quantity": "3"}, "quantity"),
    (
        {"sku": "BAD", "location": "MAIN", "lot": "L2", "quantity": 3, "expires_on": "tomorrow"},
        "expires_on",
    ),
    (
        {"sku": "BAD", "location": "MAIN", "lot": "L2", "quantity": 3, "expires_on": "2025-02-30"},
        "expires_on",
    ),
    ({"sku": "BAD", "location": "MAIN", "quantity": 3}, "lot"),
    ({"sku": "BAD", "location": "MAIN", "lot": "L2", "quantity": 10**9 + 1}, "quantity"),
]


def test_bad_receipts_are_422(client, shop):
    before = snapshot()

    def check(body, field):
        err = assert_error(client.post("/api/receipts", json=body), 422, "validation_error")
        assert field in fields(err), err

    each(RECEIPT_CASES, check)
    assert snapshot() == before


def test_bad_products_are_422_and_duplicates_409(client, shop):
    before = snapshot()
    assert "sku" in fields(
        assert_error(
            client.post("/api/products", json={"sku": "", "name": "x"}), 422, "validation_error"
        )
    )
    assert "name" in fields(
        assert_error(
            client.post("/api/products", json={"sku": "NEW", "name": 5}), 422, "validation_error"
        )
    )
    assert_error(
        client.post("/api/products", json={"sku": "BAD", "name": "again"}), 409, "conflict"
    )
    assert snapshot() == before


def test_bad_receipts_for_unknown_sku_or_conflicting_lot_write_nothing(client, shop):
    before = snapshot()
    # Unknown sku: not even the (new) location is created.
    assert_error(
        client.post(
            "/api/receipts", json={"sku": "NOPE", "location": "NEW-LOC", "lot": "X", "quantity": 1}
        ),
        422,
        "unknown_sku",
    )
    # An existing lot with another expiry is a conflict, not a silent merge.
    r = client.post(
        "/api/receipts",
        json={
            "sku": "BAD",
            "location": "MAIN",
            "lot": "L1",
            "quantity": 1,
            "expires_on": "2099-01-01",
        },
    )
    assert_error(r, 409, "conflict")
    assert snapshot() == before


def test_nul_characters_are_client_errors_not_500(client, shop):
    """PostgreSQL cannot store NUL in text: it must be refused as input, not crash the request."""
    before = snapshot()
    each(
        [
            (
                "product name",
                lambda: client.post("/api/products", json={"sku": "NUL", "name": "a\u0000b"}),
            ),
            ("stock filter", lambda: client.get("/api/stock", params={"sku": "a\u0000b"})),
            (
                "stock location filter",
                lambda: client.get("/api/stock", params={"location": "\u0000"}),
            ),
            (
                "sale number",
                lambda: client.post("/api/sales", json=GOOD_SALE | {"number": "S\u0000"}),
            ),
        ],
        lambda what, send: client_error(send()),
    )
    assert snapshot() == before


def test_an_oversized_body_is_a_client_error_not_500(client, shop):
    """Bigger than Django's DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB): 413 (or 400), in the error shape."""
    before = snapshot()
    lines = [{"sku": "BAD", "quantity": 1, "unit_price": "1.00"}] * 60_000
    r = client.post("/api/sales", json=GOOD_SALE | {"lines": lines})
    assert r.status_code in (400, 413, 422), f"{r.status_code}: {r.text}"
    assert_error(r, r.status_code, r.json()["error"]["code"])
    assert snapshot() == before


def test_unknown_sku_or_location_on_sale_is_422_and_a_duplicate_number_409(client, shop):
    before = snapshot()
    body = GOOD_SALE | {
        "lines": [GOOD_SALE["lines"][0], {"sku": "NOPE", "quantity": 1, "unit_price": "1.00"}]
    }
    err = assert_error(client.post("/api/sales", json=body), 422, "unknown_sku")
    assert "NOPE" in err["message"]
    assert_error(
        client.post("/api/sales", json=GOOD_SALE | {"location": "NOWHERE"}), 422, "unknown_location"
    )
    assert_error(client.post("/api/sales", json=GOOD_SALE | {"number": "S-BAD"}), 409, "conflict")
    assert snapshot() == before


def test_bad_transition_bodies_are_422(client, shop):
    before = snapshot()

    def check(body):
        err = assert_error(
            client.post(f"/api/sales/{shop['sale']['id']}/transition", json=body),
            422,
            "validation_error",
        )
        assert "to_status" in fields(err), err

    each(
        [
            {"to_status": "refunded"},
            {"to_status": "draft"},
            {"to_status": "PAID"},
            {"to_status": None},
            {},
            {"status": "paid"},
        ],
        check,
    )
    assert snapshot() == before


REFUND_CASES = [
    {"kind": "partial"},
    {"kind": "partial", "lines": []},
    {"kind": "full", "lines": [{"sale_line_id": 1, "quantity": 1}]},
    {"kind": "some"},
    {"kind": "partial", "lines": [{"sale_line_id": 1, "quantity": 0}]},
    {"kind": "partial", "lines": [{"sale_line_id": 1, "quantity": -1}]},
    {"kind": "partial", "lines": [{"sale_line_id": "1", "quantity": 1}]},
    {"kind": "partial", "lines": [{"sale_line_id": 2**70, "quantity": 1}]},
    {"kind": "partial", "lines": {"sale_line_id": 1, "quantity": 1}},
    {"lines": [{"sale_line_id": 1, "quantity": 1}]},
]


def test_bad_refund_bodies_are_422(client, shop):
    before = snapshot()
    each(
        REFUND_CASES,
        lambda body: assert_error(
            client.post(
                f"/api/sales/{shop['sale']['id']}/refunds",
                json=body,
                headers={"Idempotency-Key": "k"},
            ),
            422,
            "validation_error",
        ),
    )
    assert snapshot() == before


def test_too_long_header_or_query_values_are_422(client, shop):
    before = snapshot()
    r = client.post(
        f"/api/sales/{shop['sale']['id']}/transition",
        json={"to_status": "paid"},
        headers={"Idempotency-Key": "k" * 129},
    )
    assert_error(r, 422, "validation_error")
    assert_error(client.get("/api/stock", params={"sku": "x" * 65}), 422, "validation_error")
    assert snapshot() == before


# --- 404 -------------------------------------------------------------------------------------


def test_unknown_sale_job_or_path_is_404(client, shop):
    before = snapshot()

    def check(sale_id):
        assert_error(client.get(f"/api/sales/{sale_id}"), 404, "not_found")
        assert_error(
            client.post(f"/api/sales/{sale_id}/transition", json={"to_status": "paid"}),
            404,
            "not_found",
        )
        assert_error(
            client.post(f"/api/sales/{sale_id}/transition", json={"to_status": "cancelled"}),
            404,
            "not_found",
        )
        assert_error(
            client.post(
                f"/api/sales/{sale_id}/refunds",
                json={"kind": "full"},
                headers={"Idempotency-Key": "k"},
            ),
            404,
            "not_found",
        )

    each(
        [987654321, 2**63 - 1, 2**63, 10**30], check
    )  # beyond bigint too: 404, not a database error
    assert_error(client.get(f"/api/jobs/{uuid.uuid4()}"), 404, "not_found")
    each(
        [
            "/api/sales/abc",
            "/api/sales/-1",
            "/api/jobs/not-a-uuid",
            "/api/nothing-here",
            "/nothing-here",
        ],
        lambda path: assert_error(client.get(path), 404, "not_found"),
    )
    assert snapshot() == before


# --- 409: state ------------------------------------------------------------------------------


def test_unknown_sale_line_and_transitions_from_a_wrong_status(client, worker, shop):
    sid = shop["sale"]["id"]
    assert pay_and_wait(client, sid)["status"] == "succeeded"

    # A partial refund naming a line that is not on this sale: 422 unknown_sale_line.
    other = sale(client, "S-OTHER", [("BAD", 1)])  # a real line, but of another sale
    before = snapshot()
    for line_id in (987654321, other["lines"][0]["id"]):
        r = client.post(
            f"/api/sales/{sid}/refunds",
            json={"kind": "partial", "lines": [{"sale_line_id": line_id, "quantity": 1}]},
            headers={"Idempotency-Key": f"k-{line_id}"},
        )
        assert_error(r, 422, "unknown_sale_line")
    assert snapshot() == before

    # paid -> anything by hand: 409 invalid_transition.
    for to in ("pending", "cancelled", "paid"):
        assert_error(
            client.post(f"/api/sales/{sid}/transition", json={"to_status": to}),
            409,
            "invalid_transition",
        )
    assert snapshot() == before

    c = sale(client, "S-CANCEL", [("BAD", 1)])
    ok(client.post(f"/api/sales/{c['id']}/transition", json={"to_status": "cancelled"}), 200)
    before = snapshot()
    for to in ("paid", "pending", "cancelled"):
        assert_error(
            client.post(f"/api/sales/{c['id']}/transition", json={"to_status": to}),
            409,
            "invalid_transition",
        )
    assert snapshot() == before
    assert ok(client.get(f"/api/sales/{c['id']}"), 200)["status"] == "cancelled"

    p = sale(client, "S-PENDING", [("BAD", 1)])
    ok(client.post(f"/api/sales/{p['id']}/transition", json={"to_status": "pending"}), 200)
    before = snapshot()
    assert_error(
        client.post(f"/api/sales/{p['id']}/transition", json={"to_status": "pending"}),
        409,
        "invalid_transition",
    )
    assert snapshot() == before


# --- 401 -------------------------------------------------------------------------------------


def test_missing_or_invalid_token_is_401(anon_client, token, shop):
    before = snapshot()
    sid = shop["sale"]["id"]

    def check(headers):
        for r in (
            anon_client.get("/api/stock", headers=headers),
            anon_client.get(f"/api/sales/{sid}", headers=headers),
            anon_client.get(f"/api/jobs/{uuid.uuid4()}", headers=headers),
            anon_client.post("/api/products", json={"sku": "ANON", "name": "x"}, headers=headers),
            anon_client.post(
                "/api/receipts",
                json={"sku": "BAD", "location": "MAIN", "lot": "ANON", "quantity": 5},
                headers=headers,
            ),
            anon_client.post("/api/sales", json=GOOD_SALE, headers=headers),
            anon_client.post(
                f"/api/sales/{sid}/transition", json={"to_status": "cancelled"}, headers=headers
            ),
            anon_client.post(
                f"/api/sales/{sid}/transition", json={"to_status": "paid"}, headers=headers
            ),
            anon_client.post(
                f"/api/sales/{sid}/refunds",
                json={"kind": "full"},
                headers=headers | {"Idempotency-Key": "k"},
            ),
        ):
            assert_error(r, 401, "unauthorized")
            assert r.headers["WWW-Authenticate"].startswith("Bearer"), r.headers

    each(
        [
            {},
            {"Authorization": "Bearer sf_wrong"},
            {"Authorization": "Basic dXNlcjpwdw=="},
            {"Authorization": token},
            {"Authorization": f"Bearer {token}x"},
        ],
        check,
    )
    assert snapshot() == before


def test_revoked_token_is_401(anon_client, shop):
    from django.utils import timezone

    api_token, raw = ApiToken.issue("revoked")
    ApiToken.objects.filter(pk=api_token.pk).update(revoked_at=timezone.now())
    r = anon_client.get("/api/stock", headers={"Authorization": f"Bearer {raw}"})
    assert_error(r, 401, "unauthorized")
    assert "WWW-Authenticate" in r.headers


# --- X-Request-ID ----------------------------------------------------------------------------


def test_a_sane_request_id_is_echoed_and_an_insane_one_replaced_by_a_uuid(client, shop):
    rid = "req-" + uuid.uuid4().hex
    r = client.get("/api/stock", headers={"X-Request-ID": rid})
    assert r.status_code == 200 and r.headers["X-Request-ID"] == rid
    err = assert_error(
        client.get("/api/sales/987654321", headers={"X-Request-ID": rid}), 404, "not_found"
    )
    assert err["request_id"] == rid

    def check(rid):
        r = client.get("/api/stock", headers={"X-Request-ID": rid})
        assert r.status_code == 200
        uuid.UUID(r.headers["X-Request-ID"])
        err = assert_error(
            client.get("/api/sales/987654321", headers={"X-Request-ID": rid}), 404, "not_found"
        )
        uuid.UUID(err["request_id"])

    each(
        [
            "x" * 500,
            "a" * 129,
            "has spaces in it",
            "semi;colon;inject",
            "<script>alert(1)</script>",
            "caf\u00e9-caf\u00e9-caf\u00e9".encode(),
            "short",
            '{"json":"inject"}',
        ],
        check,
    )


def raw_request(live_server, request: bytes) -> bytes:
    """Send bytes an HTTP client library would refuse to send (e.g. a header with a line break)."""
    url = urlparse(live_server.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_request_id_with_a_line_break_is_replaced(live_server, token, shop):
    response = raw_request(
        live_server,
        b"GET /api/stock HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer "
        + token.encode()
        + b"\r\nX-Request-ID: abcdefgh-1234\r\n injected-log-line: yes\r\nConnection: close\r\n\r\n",
    )
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    assert not head.startswith("HTTP/1.0 5") and not head.startswith("HTTP/1.1 5"), head
    rid = [
        line.split(":", 1)[1].strip()
        for line in head.split("\r\n")
        if line.lower().startswith("x-request-id:")
    ]
    assert len(rid) == 1, head
    uuid.UUID(rid[0])


# --- never a 500 -----------------------------------------------------------------------------


JUNK = [
    {"number": {"nested": True}, "location": ["MAIN"], "lines": [{}]},
    {
        "number": "S-J",
        "location": "MAIN",
        "lines": [{"sku": "BAD", "quantity": 1, "unit_price": "1.00"}] * 101,
    },
    {"number": "S-J", "location": "MAIN", "lines": [None]},
    {
        "number": "\u0000",
        "location": "MAIN",
        "lines": [{"sku": "BAD", "quantity": 1, "unit_price": "1.00"}],
    },
    {
        "number": "S-J",
        "location": "MAIN",
        "lines": [{"sku": "\U0001f600", "quantity": 1, "unit_price": "1.00"}],
    },
    {
        "number": "S-J",
        "location": "MAIN",
        "lines": [{"sku": "BAD", "quantity": 1, "unit_price": "1" * 40}],
    },
    {
        "number": "S-J",
        "location": "MAIN",
        "lines": [{"sku": "BAD", "quantity": 1, "unit_price": "1.00", "x": 1}] * 0,
    },
]


def client_error(r):
    assert 400 <= r.status_code < 500, f"{r.status_code}: {r.text}"
    assert r.headers["content-type"].startswith("application/json"), (
        f"{r.status_code} {r.headers}: {r.text}"
    )
    assert_error(r, r.status_code, r.json()["error"]["code"])


def test_junk_bodies_and_content_types_are_client_errors_never_500(client, shop):
    before = snapshot()
    each(JUNK, lambda body: client_error(client.post("/api/sales", json=body)))
    each(
        ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
        lambda ct: client_error(
            client.post(
                "/api/sales", content=b"number=S-J&location=MAIN", headers={"Content-Type": ct}
            )
        ),
    )
    assert snapshot() == before


def test_wrong_method_is_a_json_client_error(client, shop):
    """405 is an error like any other: the JSON error body, a request id, and the Allow header."""
    before = snapshot()

    def check(method, path):
        r = client.request(method, path)
        assert r.status_code == 405, r.text
        assert "Allow" in r.headers
        client_error(r)

    each(
        [
            ("DELETE", f"/api/sales/{shop['sale']['id']}"),
            ("GET", "/api/products"),
            ("PUT", "/api/sales"),
            ("GET", f"/api/sales/{shop['sale']['id']}/transition"),
        ],
        check,
    )
    assert snapshot() == before
