"""Sentry end to end, with the real sentry-sdk transport and nothing of the SDK patched:
web (the live server, in this process) and a real prefork worker send their envelopes
to a local HTTP endpoint (tests/sentry_server.py), and we look at what arrived.

- a job that fails for good -> exactly one event, tagged and grouped, linked by trace
  to the web transaction of the request that asked for it;
- business failures, successes and retries -> no event;
- no personal data in anything sent.

Faults are real: a PostgreSQL trigger makes the sale's UPDATE to `paid` fail with an
unexpected database error (a non-transient error: the task fails at once); a row lock
held by the test plus `lock_timeout` (PGOPTIONS, read by libpq in the worker) gives a
real transient fault that is retried.
"""

import json
import re
import time

import pytest
import sentry_sdk
from django.db import connection
from sentry_sdk.integrations.django import DjangoIntegration

from stockflow.observability import sentry as app_sentry
from tests import faults
from tests.api_helpers import ok, pay, product, receive, refund, sale, wait_for_job
from tests.sentry_server import SentryServer

TASK = "stockflow.run_job"
QUIET_SECONDS = 1.5  # after the outcome, how long we listen for a (wrong) second event

# Personal data the run carries; none of it may reach Sentry.
EMAIL = "ada.lovelace@example.com"
PHONE = "+44 20 7946 0958"
PERSON = "Ada Lovelace"
CLIENT_IP = "198.51.100.23"
DB_IP = "203.0.113.77"
COOKIE_VALUE = "sessionid-value-0f9e8d7c6b5a"

EMAIL_RE = re.compile(rb"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
IPV4_RE = re.compile(rb"\b(?:\d{1,3}\.){3}\d{1,3}\b")
PHONE_RE = re.compile(rb"\+\d[\d ().-]{6,}\d")


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def sentry_server():
    with SentryServer() as server:
        yield server
    assert not server.errors, f"local Sentry could not read some envelopes: {server.errors}"


@pytest.fixture
def web_sentry(sentry_server):
    """Sentry in this process too, where the live server runs: the web side's
    transactions (sampled at 1.0) carry the trace the task must continue.

    Auto-enabling integrations are off here only because they would instrument the
    *test's* httpx client, which would then put one trace header on every request and
    make all traces equal (the trace assertion would prove nothing)."""
    assert app_sentry.init(
        dsn=sentry_server.dsn,
        traces_sample_rate=1.0,
        environment="test",
        release="stockflow-tests",
        auto_enabling_integrations=False,
    )
    yield sentry_server
    client = sentry_sdk.get_client()
    client.flush(timeout=5)
    client.close(timeout=2)
    sentry_sdk.init(dsn=None)  # leave this process without Sentry for the next tests


@pytest.fixture
def web_sentry_errors_only(sentry_server):
    """Sentry in this process as the web starts it in production: errors only (no
    SENTRY_TRACES_SAMPLE_RATE), so without Django's integration."""
    assert app_sentry.init(dsn=sentry_server.dsn, environment="test", release="stockflow-tests")
    assert sentry_sdk.get_client().get_integration(DjangoIntegration) is None
    yield sentry_server
    client = sentry_sdk.get_client()
    client.flush(timeout=5)
    client.close(timeout=2)
    sentry_sdk.init(dsn=None)


@pytest.fixture
def sentry_worker(worker_factory, sentry_server):
    def start(**env):
        # Rate 0: tracing on in the worker, following each job's web sampling decision.
        return worker_factory(
            **{
                "SENTRY_DSN": sentry_server.dsn,
                "SENTRY_ENVIRONMENT": "test",
                "SENTRY_RELEASE": "stockflow-tests",
                "SENTRY_TRACES_SAMPLE_RATE": "0",
                **env,
            }
        )

    return start


@pytest.fixture
def failing_paid_hook(transactional_db):
    """A PostgreSQL trigger that rejects one sale's UPDATE to `paid` (or another `status`) with an error whose
    text echoes personal data (as database errors often echo row data): an unexpected,
    non-transient exception inside the job's handler. (E-mail, phone and IP only: a
    person's name in free text cannot be told from other words, so the scrubber masks
    names by key, not in text; see the product-name check.)"""

    def install(number: str, status: str = "paid"):
        with connection.cursor() as cur:
            cur.execute(
                """
                CREATE OR REPLACE FUNCTION sentry_test_reject_paid() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                  IF NEW.status = %s AND NEW.number = %s THEN
                    RAISE EXCEPTION 'payment hook rejected sale %%: customer <%%>, phone %%, from %%',
                      NEW.number, %s, %s, %s;
                  END IF;
                  RETURN NEW;
                END $$;
                DROP TRIGGER IF EXISTS sentry_test_reject_paid ON sales_sale;
                CREATE TRIGGER sentry_test_reject_paid BEFORE UPDATE ON sales_sale
                  FOR EACH ROW EXECUTE FUNCTION sentry_test_reject_paid();
                """,
                [status, number, EMAIL, PHONE, DB_IP],
            )

    yield install
    with connection.cursor() as cur:
        cur.execute(
            "DROP TRIGGER IF EXISTS sentry_test_reject_paid ON sales_sale;"
            "DROP FUNCTION IF EXISTS sentry_test_reject_paid();"
        )


# --- helpers -----------------------------------------------------------------------------


def error_events(server: SentryServer) -> list[dict]:
    """Error/message events (envelope item type `event`); transactions are not errors."""
    return server.events()


def web_transaction(server: SentryServer, path_suffix: str) -> dict:
    def find(s):
        return [
            t
            for t in s.transactions()
            if (t.get("request") or {}).get("url", "").endswith(path_suffix)
            and (t.get("request") or {}).get("method") == "POST"
        ]

    found = server.wait_for(find, timeout=10)
    assert len(found) == 1, found
    return found[0]


def failing_sale(client, sku: str, number: str) -> dict:
    product(
        client, sku, name=PERSON
    )  # a product name that is a person's name: keyed `name`, redacted
    receive(client, sku, "L1", 5, 30)
    return sale(client, number, [(sku, 2)])


def pii_headers(rid: str) -> dict:
    return {
        "X-Request-ID": rid,
        "X-Forwarded-For": CLIENT_IP,
        "Cookie": f"sessionid={COOKIE_VALUE}",
    }


# --- 1 + 4 + 5: a job failing for good -------------------------------------------------------


def test_job_failing_for_good_sends_one_tagged_grouped_event_linked_to_the_web_trace_without_pii(
    client, token, web_sentry, sentry_worker, failing_paid_hook
):
    server = web_sentry
    sentry_worker()
    failing_paid_hook("S-SENTRY-FAIL")
    s = failing_sale(client, "SNT-FAIL", "S-SENTRY-FAIL")
    rid = "sentry-chosen-id-0001"

    response = client.post(
        f"/api/sales/{s['id']}/transition", json={"to_status": "paid"}, headers=pii_headers(rid)
    )
    job = ok(response, 202)["job"]
    finished = wait_for_job(client, job["id"])

    # The job row, through the API: failed for good with the generic code, at once.
    assert finished["status"] == "failed", finished
    assert finished["error"]["code"] == "error", finished
    assert finished["attempts"] == 1, finished  # not a transient fault: no retry
    assert finished["request_id"] == rid
    # The row keeps the full error text (operators need it; the API is authenticated):
    # proof that the personal data really was in the exception Sentry saw.
    assert EMAIL in finished["error"]["message"] and PHONE in finished["error"]["message"]

    # Exactly one error event, and it stays one.
    server.wait_for(error_events, timeout=10)
    time.sleep(QUIET_SECONDS)
    events = error_events(server)
    assert len(events) == 1, [e.get("exception") for e in events]
    event = events[0]
    assert event["level"] == "error"

    # Tags and grouping. Sentry lists a chain innermost first: psycopg's RaiseException,
    # then the Django wrapper that escaped the task, which names the group.
    chain = [(v.get("module"), v["type"]) for v in event["exception"]["values"]]
    assert chain == [
        ("psycopg.errors", "RaiseException"),
        ("django.db.utils", "ProgrammingError"),
    ], chain
    tags = event["tags"]
    assert tags["request_id"] == rid
    assert tags["job_id"] == job["id"]
    assert tags["celery_task"] == TASK
    assert tags["job_kind"] == "sale.paid"
    assert event["fingerprint"] == ["job-failed", TASK, "sale.paid", "ProgrammingError"]

    # Trace propagation: the task's error event belongs to the trace of the web
    # transaction that accepted the job, and that trace is not shared by other requests.
    web = web_transaction(server, f"/api/sales/{s['id']}/transition")
    trace_id = web["contexts"]["trace"]["trace_id"]
    assert event["contexts"]["trace"]["trace_id"] == trace_id
    web_traces = [
        t["contexts"]["trace"]["trace_id"]
        for t in server.transactions()
        if t.get("request") and "/transition" not in t["request"].get("url", "")
    ]
    assert web_traces and trace_id not in web_traces, (
        "every request shares one trace: the check would prove nothing"
    )
    submit = [sp for sp in web.get("spans", []) if sp.get("op") == "queue.submit.celery"]
    assert len(submit) == 1 and submit[0]["description"] == TASK, web.get("spans")
    # The worker's own transaction for the task (sampled because the web's was) hangs
    # under the web's queue.submit span, and the error happened inside it.
    (task_tx,) = [t for t in server.transactions() if t.get("transaction") == TASK]
    assert task_tx["contexts"]["trace"]["trace_id"] == trace_id
    assert task_tx["contexts"]["trace"]["parent_span_id"] == submit[0]["span_id"]
    assert event["contexts"]["trace"]["span_id"] == task_tx["contexts"]["trace"]["span_id"]

    # No personal data in anything sent, by either process.
    sentry_sdk.get_client().flush(timeout=5)
    assert_no_personal_data(server, token)
    # The exception text kept its meaning, minus the personal data.
    value = event["exception"]["values"][-1]["value"]
    assert "payment hook rejected sale S-SENTRY-FAIL" in value and "[redacted]" in value, value
    # The product's request body (name = a person's name) was redacted by key.
    created = web_transaction(server, "/api/products")
    assert (created.get("request") or {}).get("data", {}).get("name") in (None, "[redacted]"), (
        created.get("request")
    )


def test_errors_only_worker_sends_one_tagged_event_per_job_failing_for_good_and_none_after(
    client, token, sentry_server, sentry_worker, failing_paid_hook
):
    """The worker as production starts it (no SENTRY_TRACES_SAMPLE_RATE): Celery's
    integration is not installed (a span per publish and a transaction per task, sampled
    or not); stockflow reports a task failing for good itself, in a scope of its own."""
    sentry_worker(SENTRY_TRACES_SAMPLE_RATE="")
    failing_paid_hook("S-SENTRY-EO")
    bad = failing_sale(client, "SNT-EO", "S-SENTRY-EO")
    good = failing_sale(client, "SNT-EO-OK", "S-SENTRY-EO-OK")
    rid = "sentry-errors-only-0001"

    response = client.post(
        f"/api/sales/{bad['id']}/transition", json={"to_status": "paid"}, headers=pii_headers(rid)
    )
    job = ok(response, 202)["job"]
    assert wait_for_job(client, job["id"])["status"] == "failed"
    # The next job in the same worker succeeds: no event, and no tags carried over.
    good_job = pay(client, good["id"])
    assert wait_for_job(client, good_job["id"])["status"] == "succeeded"

    sentry_server.wait_for(error_events, timeout=10)
    time.sleep(QUIET_SECONDS)
    events = error_events(sentry_server)
    assert len(events) == 1, [e.get("exception") for e in events]
    event = events[0]
    tags = event["tags"]
    assert tags["request_id"] == rid
    assert tags["job_id"] == job["id"]
    assert tags["celery_task"] == TASK
    assert tags["job_kind"] == "sale.paid"
    assert event["fingerprint"] == ["job-failed", TASK, "sale.paid", "ProgrammingError"]
    assert not sentry_server.transactions(), "errors only: no transaction is sent"
    assert_no_personal_data(sentry_server, token, kinds=("event",))


def assert_no_personal_data(
    server: SentryServer, token: str, kinds=("event", "transaction")
) -> None:
    raw = server.raw()
    for secret in (EMAIL, PHONE, PERSON, CLIENT_IP, DB_IP, COOKIE_VALUE, token):
        assert secret.encode() not in raw, f"{secret!r} reached Sentry"
    assert b"Bearer " not in raw

    bodies = [(i.type, i.payload) for e in server.envelopes for i in e.items]
    assert {t for t, _ in bodies} >= set(kinds)
    for item_type, payload in bodies:
        assert not EMAIL_RE.search(payload), (item_type, EMAIL_RE.findall(payload))
        assert not PHONE_RE.search(payload), (item_type, PHONE_RE.findall(payload))
        if item_type in ("event", "transaction"):
            # `modules` lists package versions, some of which look like IPv4 (1.1.1.2).
            payload = json.dumps(
                {k: v for k, v in json.loads(payload).items() if k != "modules"}
            ).encode()
        # 127.0.0.1 is the test's own loopback (live server / DSN host), not a person's address.
        assert set(IPV4_RE.findall(payload)) <= {b"127.0.0.1"}, (
            item_type,
            IPV4_RE.findall(payload),
        )

    for ev in server.events() + server.transactions():
        assert "user" not in ev, ev.get("user")
        request = ev.get("request") or {}
        assert "REMOTE_ADDR" not in (request.get("env") or {}), request
        assert not request.get("cookies"), request
        headers = {k.lower(): v for k, v in (request.get("headers") or {}).items()}
        for name in ("authorization", "cookie", "x-forwarded-for"):
            assert headers.get(name) in (None, "[Filtered]", "[redacted]", ""), (
                name,
                headers.get(name),
            )


def test_web_errors_only_reports_an_unexpected_error_once_tagged_without_pii(
    client, token, web_sentry_errors_only, failing_paid_hook
):
    """The web's default (no tracing): Django's integration is not installed, yet an
    unexpected error still becomes exactly one event with the request id, method, path
    and the handler's log line as a breadcrumb, and no personal data."""
    server = web_sentry_errors_only
    failing_paid_hook("S-SENTRY-WEB", status="cancelled")
    s = failing_sale(client, "SNT-WEB", "S-SENTRY-WEB")
    rid = "sentry-web-error-0001"

    response = client.post(
        f"/api/sales/{s['id']}/transition",
        json={"to_status": "cancelled"},
        headers=pii_headers(rid),
    )
    assert response.status_code == 500, response.text
    assert response.json()["error"]["request_id"] == rid
    assert EMAIL not in response.text and "Traceback" not in response.text

    server.wait_for(error_events, timeout=10)
    time.sleep(QUIET_SECONDS)
    events = error_events(server)
    assert len(events) == 1, [e.get("exception") for e in events]
    assert events[0]["tags"]["request_id"] == rid, events[0].get("tags")
    event = events[0]
    assert event["level"] == "error"
    assert event["request"] == {"method": "POST", "url": f"/api/sales/{s['id']}/transition"}, (
        event.get("request")
    )
    assert event["exception"]["values"][-1]["type"] == "ProgrammingError", event["exception"][
        "values"
    ]
    # The handler's ERROR log line rode along as a breadcrumb (scrubbed like the rest).
    crumbs = (event.get("breadcrumbs") or {}).get("values", [])
    assert any(c.get("category") == "api.api" and c.get("level") == "error" for c in crumbs), crumbs
    assert not server.transactions(), "errors only: no transactions"
    sentry_sdk.get_client().flush(timeout=5)
    assert_no_personal_data(server, token, kinds=("event",))


# --- 2 + 3: business failures, successes and retries send nothing ----------------------------


def test_business_failures_successes_and_retries_send_no_event(client, web_sentry, sentry_worker):
    """Retries use a real transient fault: the test holds a stock row's lock; the
    worker's `lock_timeout` (libpq's PGOPTIONS) turns the wait into LockNotAvailable,
    which the task retries with backoff. Released after a retry, the job succeeds."""
    server = web_sentry
    sentry_worker(PGOPTIONS="-c lock_timeout=200")
    product(client, "SNT-OK")
    receive(client, "SNT-OK", "L1", 3, 30)
    paid = sale(client, "S-SENTRY-OK", [("SNT-OK", 2)])
    short = sale(client, "S-SENTRY-SHORT", [("SNT-OK", 50)])

    succeeded = wait_for_job(client, pay(client, paid["id"])["id"])
    insufficient = wait_for_job(client, pay(client, short["id"])["id"])
    line_id = paid["lines"][0]["id"]
    partial = [{"sale_line_id": line_id, "quantity": 1}]
    refunded = wait_for_job(
        client, ok(refund(client, paid["id"], "refund-1", "partial", partial), 202)["job"]["id"]
    )
    too_much = [{"sale_line_id": line_id, "quantity": 2}]
    over = refund(client, paid["id"], "refund-2", "partial", too_much)  # 1 left: refused by the API

    assert succeeded["status"] == "succeeded", succeeded
    assert (
        insufficient["status"] == "failed" and insufficient["error"]["code"] == "insufficient_stock"
    ), insufficient
    assert refunded["status"] == "succeeded", refunded
    assert over.status_code == 422 and over.json()["error"]["code"] == "over_refund", over.text

    # Retried, then succeeded.
    product(client, "SNT-RETRY")
    batch = receive(client, "SNT-RETRY", "L1", 5, 30)
    s = sale(client, "S-SENTRY-RETRY", [("SNT-RETRY", 1)])
    with faults.lock_holder() as holder:
        # The stock row: the job locks it after the sale; the API request does not touch it.
        holder.execute(
            "SELECT 1 FROM inventory_stockonhand WHERE batch_id = %s FOR UPDATE",
            [batch["batch_id"]],
        )
        job = pay(client, s["id"])
        deadline = time.time() + 15
        while client.get(f"/api/jobs/{job['id']}").json()["attempts"] < 2:
            assert time.time() < deadline, "the job was not retried"
            time.sleep(0.05)
        assert error_events(server) == []
        holder.rollback()  # release the lock: the next retry goes through
    retried = wait_for_job(client, job["id"])
    assert retried["status"] == "succeeded", retried
    assert retried["attempts"] >= 2  # at least one refused attempt, retried

    # Both sides did report (web and task transactions arrived: the worker's follow the
    # web's sampling), so the silence is meaningful.
    web_transaction(server, f"/api/sales/{short['id']}/transition")
    server.wait_for(
        lambda s: len([t for t in s.transactions() if t.get("transaction") == TASK]) >= 4
    )
    time.sleep(QUIET_SECONDS)
    assert error_events(server) == [], [
        e.get("exception") or e.get("message") for e in error_events(server)
    ]


def test_retries_exhausted_fail_the_job_and_send_exactly_one_event(
    client, web_sentry, sentry_worker
):
    """A transient fault that never clears: the worker retries (bounded) and then the job
    fails with `error` and one Sentry event, not one per attempt."""
    server = web_sentry
    sentry_worker(
        PGOPTIONS="-c lock_timeout=200", JOB_MAX_RETRIES=2, JOB_RETRY_BACKOFF_MAX_SECONDS=1
    )
    product(client, "SNT-STUCK")
    batch = receive(client, "SNT-STUCK", "L1", 5, 30)
    s = sale(client, "S-SENTRY-STUCK", [("SNT-STUCK", 1)])
    with faults.lock_holder() as holder:
        holder.execute(
            "SELECT 1 FROM inventory_stockonhand WHERE batch_id = %s FOR UPDATE",
            [batch["batch_id"]],
        )
        job = wait_for_job(client, pay(client, s["id"])["id"], timeout=30)
        holder.rollback()
    assert job["status"] == "failed" and job["error"]["code"] == "error", job
    assert job["attempts"] == 3  # the first try and two retries
    assert "TransientError" in job["error"]["message"]
    server.wait_for(lambda srv: len(error_events(srv)) >= 1)
    time.sleep(QUIET_SECONDS)
    events = error_events(server)
    assert len(events) == 1, [e.get("exception") for e in events]
    assert (
        events[0]["tags"]["job_kind"] == "sale.paid"
        and events[0]["tags"]["celery_task"] == "stockflow.run_job"
    )
    assert events[0]["fingerprint"] == [
        "job-failed",
        "stockflow.run_job",
        "sale.paid",
        "TransientError",
    ]
    assert ok(client.get(f"/api/sales/{s['id']}"), 200)["status"] == "draft"  # nothing written


def test_starting_sentry_raises_no_deprecation_warning(sentry_server):
    """send_default_pii is deprecated in the pinned sentry-sdk (3.0 removes it): stockflow
    starts Sentry with data_collection, as the web and the worker do."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            assert app_sentry.init(dsn=sentry_server.dsn, environment="test")
            assert app_sentry.init(dsn=sentry_server.dsn, django=False, traces_sample_rate=0.0)
        finally:
            sentry_sdk.get_client().close(timeout=2)
            sentry_sdk.init(dsn=None)
    from_sentry = [
        w
        for w in caught
        if issubclass(w.category, DeprecationWarning) and "sentry" in str(w.filename)
    ]
    assert not from_sentry, [str(w.message) for w in from_sentry]
    options = sentry_sdk.get_client().options
    assert "send_default_pii" not in options or not options["send_default_pii"]


def test_periodic_tasks_check_in_with_sentry_crons(sentry_server, transactional_db):
    """The reconciler and the ledger check report each run to Sentry Crons (named
    monitors with their schedules), so a stopped beat becomes a missed check-in."""
    from stockflow.observability import sentry as obs_sentry
    from tasks import jobs as periodic

    obs_sentry._last_checkin.clear()
    assert app_sentry.init(dsn=sentry_server.dsn, django=False, environment="test")
    try:
        periodic.reconcile_jobs()
        periodic.reconcile_jobs()  # within the minute: no second check-in from this process
        periodic.check_ledger()
        sentry_sdk.get_client().flush(timeout=5)
    finally:
        sentry_sdk.get_client().close(timeout=2)
        sentry_sdk.init(dsn=None)
    checkins = [i.json() for i in sentry_server.items("check_in")]
    by_slug = {}
    for c in checkins:
        by_slug.setdefault(c["monitor_slug"], []).append(c)
    assert set(by_slug) == {"stockflow-reconcile-jobs", "stockflow-check-ledger"}, by_slug
    for slug, runs in by_slug.items():
        assert [c["status"] for c in runs] == ["in_progress", "ok"], (slug, runs)
        schedule = runs[0]["monitor_config"]["schedule"]
        assert schedule["type"] == "interval" and schedule["unit"] == "minute", schedule
    assert by_slug["stockflow-check-ledger"][0]["monitor_config"]["schedule"]["value"] == 5
