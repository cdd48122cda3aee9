"""The public lead form: stored, validated, throttled per client across web processes, no PII in logs."""

import ipaddress
import json
import time

import httpx
import pytest
import redis

from harness.processes import free_port
from stockflow.accounts import scopes
from stockflow.accounts.models import ApiToken
from stockflow.leads.models import Lead
from stockflow.platform import redis_client
from tests.conftest import WebProcess
from tests.metrics_helpers import samples, scrape, value

LEAD = {
    "name": "Ada Lovelace",
    "email": "ada@example.org",
    "phone": "+44 20 7946 0958",
    "message": "Please call me about bulk orders",
    "source": "website",
}


@pytest.fixture(autouse=True)
def fresh_budget(broker):
    for key in broker.scan_iter("stockflow:throttle:*"):
        broker.delete(key)


def away_from_minute_boundary():
    # Fixed one-minute windows: don't let a test's three requests straddle two windows.
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)


def test_lead_is_stored_and_listed_with_the_right_scope(anon_client, live_server, caplog):
    r = anon_client.post("/public/leads", json=LEAD)
    assert r.status_code == 201, r.text
    lead = Lead.objects.get(pk=r.json()["id"])
    assert (lead.name, lead.email, lead.phone, lead.source) == (
        LEAD["name"],
        LEAD["email"],
        LEAD["phone"],
        "website",
    )
    assert len(lead.client_hash) == 16 and "127.0.0.1" not in lead.client_hash

    _, reader = ApiToken.issue("sales", [scopes.READ])
    _, leads_reader = ApiToken.issue("crm", [scopes.LEADS_READ])
    with httpx.Client(base_url=live_server.url) as c:
        assert c.get("/api/leads", headers={"Authorization": f"Bearer {reader}"}).status_code == 403
        listed = c.get("/api/leads", headers={"Authorization": f"Bearer {leads_reader}"}).json()
    assert listed["results"][0]["email"] == LEAD["email"] and listed["next"] is None

    logged = json.dumps([r.msg for r in caplog.records if isinstance(r.msg, dict)], default=str)
    assert "public.lead.created" in logged
    for pii in (LEAD["name"], LEAD["email"], LEAD["phone"], "Ada", "127.0.0.1"):
        assert pii not in logged, f"{pii!r} reached the logs"


def test_invalid_lead_is_422_with_field_messages_and_stores_nothing(anon_client):
    r = anon_client.post(
        "/public/leads", json={"name": "", "email": "not-an-email", "phone": "call me"}
    )
    assert r.status_code == 422
    fields = {d["field"] for d in r.json()["error"]["details"]}
    assert {"name", "email", "phone"} <= fields
    json_ct = {"Content-Type": "application/json"}
    assert anon_client.post("/public/leads", content=b"{nope", headers=json_ct).status_code == 400
    assert not Lead.objects.exists()


def test_forwarded_for_is_ignored_unless_the_proxy_is_trusted(anon_client, settings):
    away_from_minute_boundary()
    spoofed = [
        anon_client.post("/public/leads", json=LEAD, headers={"X-Forwarded-For": f"203.0.113.{i}"})
        for i in range(3)
    ]
    assert [r.status_code for r in spoofed] == [201, 201, 429]  # one client, whatever it claims

    settings.TRUSTED_PROXIES = [ipaddress.ip_network("127.0.0.0/8")]
    behind_proxy = [
        anon_client.post("/public/leads", json=LEAD, headers={"X-Forwarded-For": f"198.51.100.{i}"})
        for i in range(3)
    ]
    assert [r.status_code for r in behind_proxy] == [
        201,
        201,
        201,
    ]  # three real clients behind our proxy


def test_third_lead_in_a_minute_is_429_across_two_web_processes(tmp_path, transactional_db, broker):
    webs = [WebProcess(tmp_path, "a"), WebProcess(tmp_path, "b")]
    try:
        away_from_minute_boundary()
        answers = [
            httpx.post(f"{w.url}/public/leads", json=LEAD, timeout=10)
            for w in (webs[0], webs[1], webs[0])
        ]
        assert [a.status_code for a in answers] == [201, 201, 429], [a.text for a in answers]
        third = answers[2]
        assert 0 < int(third.headers["Retry-After"]) <= 60
        assert third.json()["error"]["code"] == "throttled"
        assert Lead.objects.count() == 2

        text = scrape(f"{webs[0].url}/metrics", "test-metrics-token")
        assert not any(
            pii in text for pii in (LEAD["name"], LEAD["email"], LEAD["phone"], "127.0.0.1")
        )
        metrics = samples(text)
        assert value(metrics, "public_leads_429_total") == 1
        assert value(metrics, "public_leads_throttled_total", scope="minute") == 1
        assert (
            value(metrics, "public_leads_requests_total", result="created") == 1
        )  # this process's share
        log = webs[0].log.read_text()
        # The client's address never; the server's own bind address in gunicorn's
        # startup line stays readable (it is not personal data).
        client_lines = [line for line in log.splitlines() if "Listening at:" not in line]
        assert "public.lead.throttled" in log and LEAD["email"] not in log
        assert not [line for line in client_lines if "127.0.0.1" in line], client_lines
    finally:
        for w in webs:
            w.stop()


def test_hourly_budget(anon_client, settings):
    settings.LEADS_PER_MINUTE = 100
    answers = [anon_client.post("/public/leads", json=LEAD).status_code for _ in range(11)]
    assert answers == [201] * 10 + [429]


def test_lead_form_without_redis_is_503_counted_as_a_server_error(
    anon_client, live_server, monkeypatch
):
    """Redis (the throttle's store) unreachable: a clear 503 with Retry-After, nothing stored,
    and the availability SLI sees a server-side error, not a 500."""
    before = value(
        samples(scrape(f"{live_server.url}/metrics", "test-metrics-token")),
        "public_leads_requests_total",
        result="error",
    )
    # A real client on a port nobody listens on: connection refused, as when Redis is down.
    monkeypatch.setattr(
        redis_client, "_client", redis.Redis(port=free_port(), socket_connect_timeout=1)
    )
    r = anon_client.post("/public/leads", json=LEAD)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "unavailable" and r.headers["Retry-After"] == "5"
    assert not Lead.objects.exists()
    after = value(
        samples(scrape(f"{live_server.url}/metrics", "test-metrics-token")),
        "public_leads_requests_total",
        result="error",
    )
    assert after == before + 1
