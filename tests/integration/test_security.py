"""Token scopes, revocation, the audit trail, and production settings."""

import os
import subprocess
import sys

import httpx
import pytest
from django.core.management import call_command
from django.db import connection, transaction

from stockflow.accounts import scopes
from stockflow.accounts.models import ApiToken, AuditEntry
from stockflow.stock.models import Job, Refund, Sale
from tests.api_helpers import ok, pay_and_wait, product, receive, sale

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def bearer(live_server, raw):
    return httpx.Client(
        base_url=live_server.url, headers={"Authorization": f"Bearer {raw}"}, timeout=30
    )


@pytest.fixture
def paid_sale(client, worker):
    product(client, "SEC")
    receive(client, "SEC", "L1", 10, 100)
    s = sale(client, "S-SEC", [("SEC", 2)])
    assert pay_and_wait(client, s["id"])["status"] == "succeeded"
    return s


def test_wrong_scope_is_403_and_writes_nothing(live_server, client, paid_sale):
    _, raw = ApiToken.issue("reader", [scopes.READ])
    with bearer(live_server, raw) as reader:
        assert (
            ok(reader.get(f"/api/sales/{paid_sale['id']}"), 200)["status"] == "paid"
        )  # reading is fine
        jobs, refunds, sales = Job.objects.count(), Refund.objects.count(), Sale.objects.count()
        answers = [
            reader.post(
                f"/api/sales/{paid_sale['id']}/refunds",
                json={"kind": "full"},
                headers={"Idempotency-Key": "k1"},
            ),
            reader.post(
                "/api/sales",
                json={
                    "number": "X",
                    "location": "MAIN",
                    "lines": [{"sku": "SEC", "quantity": 1, "unit_price": "1.00"}],
                },
            ),
            reader.post("/api/products", json={"sku": "NEW", "name": "n"}),
            reader.get("/api/leads"),
        ]
    for r in answers:
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "forbidden"
    assert (Job.objects.count(), Refund.objects.count(), Sale.objects.count()) == (
        jobs,
        refunds,
        sales,
    )

    # sales:write alone cannot refund either: refunds need refunds:write.
    _, raw = ApiToken.issue("cashier", [scopes.SALES_WRITE, scopes.READ])
    with bearer(live_server, raw) as cashier:
        r = cashier.post(
            f"/api/sales/{paid_sale['id']}/refunds",
            json={"kind": "full"},
            headers={"Idempotency-Key": "k2"},
        )
    assert r.status_code == 403 and Refund.objects.count() == refunds


def test_revoked_token_is_401_and_last_use_is_recorded(live_server):
    token, raw = ApiToken.issue("temp")
    with bearer(live_server, raw) as c:
        assert c.get("/api/stock").status_code == 200
        token.refresh_from_db()
        assert token.last_used_at is not None
        call_command("revoke_api_token", "temp")
        r = c.get("/api/stock")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


def test_tokens_are_stored_hashed_and_shown_once(transactional_db):
    result = subprocess.run(
        [sys.executable, "manage.py", "create_api_token", "ci-bot", "--scopes", "read"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "STOCKFLOW_USE_TEST_DATABASE": "1"},
    )
    assert result.returncode == 0, result.stderr
    raw = result.stdout.strip().splitlines()[-1]
    assert raw.startswith("sf_") and len(raw) > 40
    stored = ApiToken.objects.get(name="ci-bot")
    assert stored.scopes == ["read"]
    assert raw not in stored.token_hash and ApiToken.authenticate(raw) == stored


def test_audit_trail_records_accepted_and_rejected_requests_without_pii(
    client, paid_sale, live_server
):
    rid = "audit-request-0001"
    accepted = client.post(
        f"/api/sales/{paid_sale['id']}/refunds",
        json={"kind": "full"},
        headers={"Idempotency-Key": "a1", "X-Request-ID": rid},
    )
    job_id = ok(accepted, 202)["job"]["id"]
    rejected = client.post(
        f"/api/sales/{paid_sale['id']}/transition", json={"to_status": "pending"}
    )
    assert rejected.status_code == 409
    _, raw = ApiToken.issue("reader", [scopes.READ])
    with bearer(live_server, raw) as reader:
        assert (
            reader.post(
                f"/api/sales/{paid_sale['id']}/refunds",
                json={"kind": "full"},
                headers={"Idempotency-Key": "a2"},
            ).status_code
            == 403
        )

    rows = list(
        AuditEntry.objects.order_by("id").values(
            "token_name", "action", "sale_id", "request_id", "outcome", "status_code", "job_id"
        )
    )
    tail = rows[-3:]
    assert tail[0] == {
        "token_name": "tests",
        "action": "sale.refund",
        "sale_id": paid_sale["id"],
        "request_id": rid,
        "outcome": "accepted",
        "status_code": 202,
        "job_id": __import__("uuid").UUID(job_id),
    }
    assert tail[1]["outcome"] == "invalid_transition" and tail[1]["status_code"] == 409
    assert (
        tail[2]["token_name"] == "reader"
        and tail[2]["outcome"] == "forbidden"
        and tail[2]["status_code"] == 403
    )
    assert any(
        r["action"] == "sale.transition" and r["outcome"] == "accepted" for r in rows
    )  # the fixture's PAID


def test_audit_trail_and_ledger_are_append_only(client, paid_sale):
    assert AuditEntry.objects.exists()
    for sql in (
        "UPDATE core_auditentry SET outcome = 'x'",
        "DELETE FROM core_auditentry",
        "UPDATE inventory_stockmove SET quantity = 0",
        "DELETE FROM inventory_stockmove",
    ):
        with (
            pytest.raises(Exception, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql)


def test_production_settings_pass_check_deploy():
    env = {
        **os.environ,
        "STOCKFLOW_ENV": "production",
        "DJANGO_SECRET_KEY": "k" * 20 + "-Zq9!x" * 10,
        "DJANGO_ALLOWED_HOSTS": "stockflow.example.com",
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key():
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SECRET_KEY"}
    env.update(STOCKFLOW_ENV="production", DJANGO_SETTINGS_MODULE="config.settings")
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0 and "DJANGO_SECRET_KEY must be set" in result.stderr


def test_security_headers_on_api_responses(anon_client):
    r = anon_client.get("/healthz")
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Referrer-Policy"] == "same-origin"


def test_console_and_metrics_need_auth(anon_client):
    assert anon_client.get("/console/").status_code == 302
    assert anon_client.get("/metrics").status_code == 401
