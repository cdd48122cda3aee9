"""P8 #13: a name and a phone number in a query string, or a personal User-Agent, never
reach the JSON log lines of a real web process (bin/web, gunicorn); the server's own
bind address in its startup line stays readable, in the web's and the worker's logs."""

import json
from urllib.parse import unquote

import httpx

from tests.conftest import WebProcess

QUERY = "name=Ada%20Lovelace&phone=%2B44%2020%207946%200958"
FORBIDDEN = (
    "Ada",
    "Lovelace",
    "7946",
    "0958",
    "%2B44",
    "ada@example.com",
    unquote(QUERY),
)


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def test_query_string_and_user_agent_stay_out_of_the_web_log(tmp_path, token, broker):
    web = WebProcess(tmp_path, "privacy")
    try:
        headers = {
            "Authorization": f"Bearer {token}",
            "User-Agent": "Mozilla/5.0 (Ada Lovelace; ada@example.com)",
            "X-Request-ID": "privacy-check-0001",
        }
        for path in (f"/api/stock?{QUERY}", f"/api/no-such-route?{QUERY}", f"/healthz?{QUERY}"):
            httpx.get(f"{web.url}{path}", headers=headers, timeout=10)
        text = web.log.read_text()
    finally:
        web.stop()

    lines = json_lines(text)
    finished = [
        line
        for line in lines
        if line.get("event") == "request_finished"
        and line.get("request_id") == "privacy-check-0001"
    ]
    assert len(finished) >= 2, text[-3000:]  # the request lines were written, and scrubbed
    assert any(line["request"].startswith("GET /api/stock?name=") for line in finished), finished
    for pii in FORBIDDEN:
        assert pii not in text, f"{pii!r} reached the web log"
    # The server's own address is not personal data: its startup line stays readable.
    assert any(
        f"Listening at: http://127.0.0.1:{web.port}" in str(line.get("event")) for line in lines
    ), text[:3000]


def test_the_workers_broker_address_stays_readable(worker):
    lines = json_lines(worker.log())
    # Celery writes "Connected to redis://:**@127.0.0.1:6379/15" (its own password mask).
    connected = [
        str(line.get("event")) for line in lines if "Connected to" in str(line.get("event"))
    ]
    assert connected and all("@127.0.0.1:" in event for event in connected), worker.log()[:3000]
