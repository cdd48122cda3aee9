"""The ops console (/console/) with Django's test client against the real PostgreSQL.

Figures on the page are compared with what the test counts in the database itself
(not with the console's own helpers), the quality scenario verdicts A1/A2 are driven
to PASS and to FAIL, and one test runs the real stack (API + Celery worker process).

Every test uses `transactional_db`: the ledger check runs its own REPEATABLE READ
transaction (BEGIN/COMMIT), which must not sit inside a test's wrapping transaction.
"""

import datetime
import re
import time
import uuid

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from api.console import figures, views
from stockflow.accounts.models import ApiToken, AuditEntry
from stockflow.leads.models import Lead
from stockflow.platform import redis_client
from stockflow.stock import invariants
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
from tests.api_helpers import on_hand, pay_and_wait, product, receive, refund, sale, wait_for_job
from tests.console_helpers import (
    a_sale,
    batch,
    failure_rows,
    get_page,
    job,
    jobs_bulk,
    number,
    staff_client,
    stock_rows,
    text_of,
)
from tests.staff import STAFF_PASSWORD, make_staff


@pytest.fixture(autouse=True)
def _no_stored_ledger_verdict():
    """The ledger check's stored verdict lives in Redis: each test starts without one."""
    redis_client.client().delete(invariants.VERDICT_KEY)
    yield
    redis_client.client().delete(invariants.VERDICT_KEY)


def store_verdict(violations: int, seconds_ago: float = 0) -> None:
    """As beat's check_ledger leaves it, `seconds_ago`."""
    redis_client.client().hset(
        invariants.VERDICT_KEY,
        mapping={"violations": violations, "checked_at": time.time() - seconds_ago},
    )


# --- access --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["/console/", f"/console/jobs/{uuid.uuid4()}/", "/console/runbooks/"]
)
def test_anonymous_is_redirected_to_admin_login(transactional_db, url):
    r = Client().get(url)
    assert r.status_code == 302
    assert r["Location"] == "/admin/login/?next=" + url


def test_non_staff_user_never_sees_the_console(transactional_db):
    user = get_user_model().objects.create_user("clerk", "c@example.invalid", STAFF_PASSWORD)
    c = Client()
    c.force_login(user)
    r = c.get("/console/")
    assert r.status_code == 302 and r["Location"].startswith("/admin/login/?next=/console/")
    # The login form says why instead of showing any figure.
    page = c.get(r["Location"]).content.decode()
    assert "not authorized" in page and "A1" not in page


def test_staff_logs_in_through_the_admin_login_form_with_csrf(transactional_db):
    make_staff("opsform", superuser=False)
    c = Client(enforce_csrf_checks=True)
    login = c.get("/admin/login/?next=/console/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.content.decode()).group(
        1
    )
    # Without the CSRF token the login is refused.
    assert (
        c.post(
            "/admin/login/?next=/console/", {"username": "opsform", "password": STAFF_PASSWORD}
        ).status_code
        == 403
    )
    r = c.post(
        "/admin/login/?next=/console/",
        {"username": "opsform", "password": STAFF_PASSWORD, "csrfmiddlewaretoken": token},
    )
    assert r.status_code == 302 and r["Location"] == "/console/"
    page = get_page(c)
    assert (
        "A1" in page and 'name="csrfmiddlewaretoken"' in page
    )  # the logout form is CSRF-protected too


def test_console_answers_get_only(transactional_db):
    assert staff_client().post("/console/").status_code == 405


# --- figures that match the database -------------------------------------------------


def test_jobs_by_status_and_kind_failures_retries_and_backlog_match_the_database(transactional_db):
    s1, s2, s3 = a_sale(), a_sale(), a_sale()
    ok1 = job(s1, Job.Status.SUCCEEDED, age_min=2)
    job(s1, Job.Status.SUCCEEDED, kind=Job.Kind.SALE_REFUND, age_min=3, attempts=2)
    f_stock = job(
        s2, Job.Status.FAILED, code="insufficient_stock", age_min=4, request_id="req-insufficient-1"
    )
    f_err = job(
        s2,
        Job.Status.FAILED,
        code="error",
        age_min=6,
        attempts=6,
        request_id="req-error-1",
        message="OperationalError: <server closed the connection>",
    )
    job(s3, Job.Status.FAILED, kind=Job.Kind.SALE_REFUND, code="over_refund", age_min=7)
    queued = job(a_sale(), Job.Status.QUEUED, age_min=20)
    job(a_sale(), Job.Status.QUEUED, age_min=1)
    running = job(a_sale(), Job.Status.RUNNING, age_min=3, attempts=2)
    old_fail = job(
        s3, Job.Status.FAILED, code="error", age_min=180, request_id="req-too-old"
    )  # outside 1 h

    page = get_page(staff_client(), window="1h")
    since = timezone.now() - datetime.timedelta(hours=1)
    in_window = Job.objects.filter(created_at__gte=since)
    for kind in Job.Kind.values:
        for status in Job.Status.values:
            want = in_window.filter(kind=kind, status=status).count()
            assert number(page, f"jobs-{kind}-{status}") == want, (kind, status)
    for status in Job.Status.values:
        assert number(page, f"jobs-all-{status}") == in_window.filter(status=status).count()
        assert (
            number(page, f"retried-{status}")
            == in_window.filter(status=status, attempts__gt=1).count()
        )
    assert number(page, "jobs-all-total") == in_window.count() == 8
    assert number(page, "retried-total") == 3

    # Failures: newest first, with code and request id, each linking to its job page.
    rows = failure_rows(page)
    assert list(rows) == [
        str(j.pk) for j in in_window.filter(status="failed").order_by("-created_at")
    ]
    assert str(old_fail.pk) not in rows
    assert (
        "insufficient_stock" in rows[str(f_stock.pk)]
        and "req-insufficient-1" in rows[str(f_stock.pk)]
    )
    assert (
        "req-error-1" in rows[str(f_err.pk)]
        and "&lt;server closed the connection&gt;" in rows[str(f_err.pk)]
    )
    assert f'href="/console/jobs/{f_err.pk}/"' in rows[str(f_err.pk)]
    assert number(page, "failed-code-sale.paid-error") == 1
    assert number(page, "failed-code-sale.paid-insufficient_stock") == 1
    assert number(page, "failed-code-sale.refund-over_refund") == 1

    # Backlog: all unfinished jobs, whatever their age, and the oldest of each.
    assert number(page, "backlog-queued") == Job.objects.filter(status="queued").count() == 2
    assert number(page, "backlog-running") == 1
    assert f'href="/console/jobs/{queued.pk}/" data-testid="oldest-queued"' in page
    assert f'href="/console/jobs/{running.pk}/" data-testid="oldest-running"' in page
    assert text_of(page, "oldest-queued-age") == "20 min (past lease)"
    assert str(ok1.pk) not in rows  # succeeded jobs are counted, not listed

    # The failures list narrowed to one code (the counts stay whole); unknown codes are ignored.
    c = staff_client(get_user_model().objects.get(username="ops"))
    page = get_page(c, window="1h", code="error")
    assert list(failure_rows(page)) == [str(f_err.pk)]
    assert text_of(page, "failures-code") == "error" and number(page, "jobs-all-failed") == 3
    assert len(failure_rows(get_page(c, window="1h", code="<nope>"))) == 3


def test_the_window_selects_jobs_by_creation_time_and_bad_values_fall_back(transactional_db):
    s = a_sale()
    job(s, Job.Status.SUCCEEDED, age_min=10)
    job(s, Job.Status.SUCCEEDED, age_min=30)
    job(s, Job.Status.SUCCEEDED, age_min=60 * 5)
    job(s, Job.Status.SUCCEEDED, age_min=60 * 24 * 3)
    job(s, Job.Status.SUCCEEDED, age_min=60 * 24 * 8)
    c = staff_client()
    for window, want in (("15m", 1), ("1h", 2), ("24h", 3), ("7d", 4)):
        page = get_page(c, window=window)
        assert text_of(page, "window-current") == window
        assert number(page, "jobs-all-succeeded") == want, window
    page = get_page(c, window="1y; DROP TABLE jobs_job")
    assert text_of(page, "window-current") == "1h" and number(page, "jobs-all-succeeded") == 2


def test_chart_is_inline_svg_with_one_bar_per_bucket_and_the_counts(transactional_db):
    s = a_sale()
    for _ in range(3):
        job(s, Job.Status.SUCCEEDED, age_min=5)
    job(s, Job.Status.FAILED, code="error", age_min=5)
    page = get_page(staff_client(), window="15m")
    svg = re.search(r"<svg .*?</svg>", page, re.S).group(0)
    bars = re.findall(r'<g class="bar"', svg)
    assert 15 <= len(bars) <= 16  # one per minute of the window (the first one partial)
    drawn = {}
    for status, count in re.findall(r'data-status="(\w+)" data-count="(\d+)"', svg):
        drawn[status] = drawn.get(status, 0) + int(count)
    assert drawn == {"succeeded": 3, "failed": 1}
    assert "<script" not in page  # plain HTML, no JavaScript


def test_stock_on_hand_by_batch_highlights_expired_and_soon(transactional_db):
    expired = batch("ST-1", "OLD", 4, -1)
    today = batch("ST-1", "TODAY", 2, 0)  # expires today: still sellable, but soon
    soon = batch("ST-1", "SOON", 3, 30)
    later = batch("ST-1", "LATER", 7, 31)
    never = batch("ST-2", "FOREVER", 9, None)
    empty_expired = batch("ST-2", "GONE", 0, -10)
    page = get_page(staff_client())
    rows = stock_rows(page)
    assert {k: v[1] for k, v in rows.items()} == dict(
        StockOnHand.objects.values_list("batch_id", "quantity")
    )
    assert rows[expired.pk][0] == "expired" and "expired" in rows[expired.pk][2]
    assert rows[today.pk][0] == "soon" and rows[soon.pk][0] == "soon" and "soon" in rows[soon.pk][2]
    assert rows[later.pk][0] == "ok" and rows[never.pk][0] == "never"
    assert "empty" in rows[empty_expired.pk][2]
    # FEFO order: earliest expiry first, never-expiring last.
    assert list(rows) == [empty_expired.pk, expired.pk, today.pk, soon.pk, later.pk, never.pk]
    assert (
        number(page, "expired-batches") == 1 and number(page, "expired-units") == 4
    )  # GONE has no stock
    assert number(page, "soon-batches") == 2 and number(page, "soon-units") == 5


# --- A1 ----------------------------------------------------------------------------------


def _csrf(c: Client, url="/console/") -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', get_page(c, url)).group(1)


def test_a1_shows_the_stored_verdict_and_its_age_and_never_checks_the_ledger_per_view(
    transactional_db, django_assert_max_num_queries
):
    b = batch("A1", "L1", 10, 100)
    c = staff_client()
    page = get_page(c)
    assert text_of(page, "a1-verdict") == "NO DATA"
    assert text_of(page, "a1-figure") == "no ledger check has run yet"
    assert text_of(page, "a1-age") == "never"

    store_verdict(0, seconds_ago=125)
    with django_assert_max_num_queries(40) as queries:
        page = get_page(c)
    ledger_sql = [q["sql"] for q in queries.captured_queries if "REPEATABLE READ" in q["sql"]]
    assert ledger_sql == [], "a page view must not scan the whole ledger"
    assert text_of(page, "a1-verdict") == "PASS"
    assert text_of(page, "a1-figure") == "0 violations of the ledger invariants"
    assert text_of(page, "a1-age") == "2 min ago" and "a1-stale" not in page
    assert "Ledger consistency: no oversell (A1)" in page and "A1 ·" not in page
    assert "Paid-transition success rate (A2)" in page and "A2 ·" not in page

    # A drift the periodic check has not seen yet: the page shows the stored verdict.
    StockOnHand.objects.filter(batch=b).update(quantity=13)
    assert text_of(get_page(c), "a1-verdict") == "PASS"

    # Older than two check intervals: flagged stale (is beat running?).
    store_verdict(3, seconds_ago=3 * 300 + 5)
    page = get_page(c)
    assert text_of(page, "a1-verdict") == "FAIL"
    assert text_of(page, "a1-figure").startswith("3 violations of the ledger invariants")
    assert text_of(page, "a1-age") == "15 min ago" and "a1-stale" in page


def test_recompute_now_checks_the_ledger_once_and_stores_the_verdict(transactional_db):
    b = batch("A1R", "L1", 10, 100)
    batch("A1R", "L2", 5, 200)
    store_verdict(0, seconds_ago=200)
    c = Client(enforce_csrf_checks=True)
    c.force_login(make_staff())
    token = _csrf(c)

    assert c.get("/console/ledger/recompute/").status_code == 405
    assert c.post("/console/ledger/recompute/").status_code == 403, "CSRF token required"
    assert invariants.last_verdict()[1] < time.time() - 100, "nothing recomputed"

    StockOnHand.objects.filter(batch=b).update(quantity=13)  # bypassed the ledger
    r = c.post(
        "/console/ledger/recompute/",
        {"csrfmiddlewaretoken": token, "next": "/console/?window=24h#quality"},
    )
    assert r.status_code == 302 and r["Location"] == "/console/?window=24h#quality"
    violations, checked_at = invariants.last_verdict()
    assert violations == 1 and checked_at > time.time() - 30
    page = get_page(c, window="24h")
    assert text_of(page, "a1-verdict") == "FAIL"
    assert text_of(page, "a1-figure").startswith("1 violation of the ledger invariants")
    message = text_of(page, "messages")
    assert "Ledger check: 1 violation(s)" in message and "on_hand_equals_moves: 1" in message
    assert f"({b.pk}, 13, 10)" in message

    StockOnHand.objects.filter(batch=b).update(quantity=10)
    # `next` must stay in the console: anything else goes back to the overview.
    r = c.post(
        "/console/ledger/recompute/",
        {"csrfmiddlewaretoken": token, "next": "https://evil.example.invalid/"},
    )
    assert r["Location"] == "/console/#quality"
    page = get_page(c)
    assert text_of(page, "a1-verdict") == "PASS"
    assert "Ledger check: no violation" in text_of(page, "messages")

    anonymous = Client()
    r = anonymous.post("/console/ledger/recompute/")
    assert r.status_code == 302 and r["Location"].startswith("/admin/login/")


def test_a1_recompute_finds_negative_on_hand(transactional_db):
    from django.db import connection

    b = batch("A1N", "L1", 1, 100)
    c = staff_client()
    with connection.cursor() as cursor:  # only a broken database could hold this row: simulate one
        cursor.execute("ALTER TABLE inventory_stockonhand DROP CONSTRAINT on_hand_not_negative")
        try:
            cursor.execute(
                "UPDATE inventory_stockonhand SET quantity = -2 WHERE batch_id = %s", [b.pk]
            )
            c.post("/console/ledger/recompute/")
        finally:
            cursor.execute(
                "UPDATE inventory_stockonhand SET quantity = 1 WHERE batch_id = %s", [b.pk]
            )
            cursor.execute(
                "ALTER TABLE inventory_stockonhand ADD CONSTRAINT on_hand_not_negative CHECK (quantity >= 0)"
            )
    page = get_page(c)
    assert text_of(page, "a1-verdict") == "FAIL"
    assert "on_hand_not_negative: 1" in text_of(page, "messages")
    assert invariants.last_verdict()[0] == 2  # negative, and no longer Σ moves


# --- A2 ----------------------------------------------------------------------------------


def a2_page(c=None, window="1h"):
    page = get_page(c or staff_client(), window=window)
    return {
        k: text_of(page, f"a2-{k}")
        for k in (
            "verdict",
            "success-verdict",
            "success-figure",
            "retries-verdict",
            "retries-figure",
            "business",
        )
    }


def test_a2_has_no_data_without_finished_paid_jobs(transactional_db):
    job(a_sale(), Job.Status.QUEUED)
    job(a_sale(), Job.Status.SUCCEEDED, kind=Job.Kind.SALE_REFUND)
    a2 = a2_page()
    assert a2["verdict"] == a2["success-verdict"] == a2["retries-verdict"] == "NO DATA"


def test_a2_passes_at_exactly_999_per_mille_and_business_failures_do_not_count(transactional_db):
    jobs_bulk(999, Job.Status.SUCCEEDED)
    jobs_bulk(1, Job.Status.FAILED, code="error")
    jobs_bulk(40, Job.Status.FAILED, code="insufficient_stock")
    jobs_bulk(3, Job.Status.FAILED, code="expired_batch")
    jobs_bulk(2, Job.Status.FAILED, code="invalid_transition")
    a2 = a2_page()
    assert a2["success-verdict"] == "PASS", a2
    assert a2["success-figure"] == "99.90 % = 999 succeeded / (999 succeeded + 1 failed with error)"
    assert a2["business"] == "45"
    assert a2["verdict"] == "PASS" and a2["retries-verdict"] == "NO DATA"


def test_a2_fails_below_999_per_mille(transactional_db):
    jobs_bulk(998, Job.Status.SUCCEEDED)
    jobs_bulk(1, Job.Status.FAILED, code="error")
    a2 = a2_page()
    # 998 / 999 = 99.8999 %: shown rounded down, never as 99.90 %.
    assert a2["success-verdict"] == "FAIL" and a2["verdict"] == "FAIL"
    assert a2["success-figure"].startswith(
        "99.89 % = 998 succeeded / (998 succeeded + 1 failed with error)"
    )


def test_a2_retries_recovered_fails_when_a_retried_job_ends_in_error(transactional_db):
    jobs_bulk(5000, Job.Status.SUCCEEDED)  # the overall ratio alone would pass: 5003 / 5004
    jobs_bulk(3, Job.Status.SUCCEEDED, attempts=3)
    jobs_bulk(1, Job.Status.FAILED, code="error", attempts=6)
    jobs_bulk(2, Job.Status.FAILED, code="insufficient_stock", attempts=2)
    a2 = a2_page()
    assert a2["success-verdict"] == "PASS"
    assert a2["retries-verdict"] == "FAIL" and a2["verdict"] == "FAIL"
    assert a2["retries-figure"] == (
        "3 retried jobs succeeded, 1 failed with error (75.00 % recovered); "
        "2 ended with a business code after a retry"
    )


def test_a2_counts_paid_jobs_finished_in_the_window_not_refunds_nor_older_outcomes(
    transactional_db,
):
    s = a_sale()
    # Created before the 1 h window, finished inside it: counted.
    job(s, Job.Status.FAILED, code="error", age_min=90, finished_after_s=60 * 80)
    # Finished before the window: not counted.
    job(s, Job.Status.FAILED, code="error", age_min=200, finished_after_s=10)
    # A refund job failing with error is not a PAID job.
    job(s, Job.Status.FAILED, kind=Job.Kind.SALE_REFUND, code="error", age_min=5)
    job(s, Job.Status.SUCCEEDED, age_min=5)
    a2 = a2_page()
    assert a2["success-figure"].endswith("= 1 succeeded / (1 succeeded + 1 failed with error)")
    assert a2["success-verdict"] == "FAIL"


# --- job page ---------------------------------------------------------------------------


def test_job_page_shows_the_job_and_the_moves_it_wrote(transactional_db):
    b1 = batch("JP", "E1", 5, 10)
    b2 = batch("JP", "E2", 5, 20)
    s = a_sale("JP")
    line = s.lines.get()
    j = job(s, Job.Status.SUCCEEDED, request_id="req-jobpage-1")
    other = job(s, Job.Status.FAILED, code="invalid_transition", age_min=1)
    StockMove.objects.create(
        kind=StockMove.Kind.SALE_OUT,
        batch=b1,
        quantity=-5,
        sale_line=line,
        job=j,
        request_id=j.request_id,
    )
    StockMove.objects.create(
        kind=StockMove.Kind.SALE_OUT,
        batch=b2,
        quantity=-1,
        sale_line=line,
        job=j,
        request_id=j.request_id,
    )
    StockOnHand.objects.filter(batch__in=[b1, b2]).update(quantity=0)
    StockOnHand.objects.filter(batch=b2).update(quantity=4)
    c = staff_client()
    page = get_page(c, f"/console/jobs/{j.pk}/")
    assert text_of(page, "job-id") == str(j.pk)
    assert (
        text_of(page, "job-status") == "succeeded"
        and text_of(page, "job-request-id") == "req-jobpage-1"
    )
    moves = re.findall(r'<tr data-move="(\d+)">', page)
    assert sorted(map(int, moves)) == sorted(
        StockMove.objects.filter(job=j).values_list("id", flat=True)
    )
    assert number(page, "moves-total") == -6
    assert f'href="/console/jobs/{other.pk}/"' in page  # the sale's other jobs
    assert f'href="/admin/stock/job/{j.pk}/change/"' in page

    page = get_page(c, f"/console/jobs/{other.pk}/")
    assert text_of(page, "job-error-code") == "invalid_transition"
    assert "no-moves" in page

    assert c.get(f"/console/jobs/{uuid.uuid4()}/").status_code == 404
    assert c.get("/console/jobs/not-a-uuid/").status_code == 404


# --- queries -----------------------------------------------------------------------------


def test_overview_query_count_does_not_grow_with_the_data(
    transactional_db, django_assert_max_num_queries
):
    c = staff_client()
    c.get("/console/")  # warm the session
    # One row in each list (an empty list is not even read), then 30.
    batch("Q-1", "L", 3, 10)
    job(a_sale(), Job.Status.FAILED, code="error", age_min=1)
    with django_assert_max_num_queries(25) as small:
        get_page(c, window="24h")
    for i in range(30):
        batch(f"Q{i}", "L", 3, i - 5)
        job(a_sale(), Job.Status.FAILED, code="error" if i % 2 else "insufficient_stock", age_min=i)
    with django_assert_max_num_queries(25) as large:
        page = get_page(c, window="24h")
    assert len(large.captured_queries) == len(small.captured_queries)
    assert len(failure_rows(page)) == 31 and len(stock_rows(page)) == 31


def test_window_query_uses_the_status_created_index(transactional_db):
    from django.db import connection

    length, bucket = figures.WINDOWS["1h"]
    since = timezone.now() - length
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")  # an empty table would always be seq-scanned
        try:
            cursor.execute(
                "EXPLAIN " + figures._WINDOW_SQL,
                [bucket, figures._ORIGIN, figures.STATUSES, since, timezone.now()],
            )
            plan = "\n".join(r[0] for r in cursor.fetchall())
        finally:
            cursor.execute("RESET enable_seqscan")
    assert "job_status_created" in plan, plan


# --- links, runbooks ---------------------------------------------------------------------


def test_links_to_flower_grafana_and_runbooks(transactional_db, monkeypatch, tmp_path):
    c = staff_client()
    page = get_page(c)
    assert 'href="http://127.0.0.1:5555" rel="noopener" id="link-flower"' in page
    assert 'href="http://127.0.0.1:3000" rel="noopener" id="link-grafana"' in page
    assert 'href="/console/runbooks/" id="link-runbooks"' in page
    # Next to A1, A2, the backlog and the failures: the runbook of the matching alert.
    for name in ("LedgerInvariantViolated", "SalePaidTransitionFailures", "OldestQueuedJobTooOld"):
        assert f'<a href="/console/runbooks/{name}.md">{name}</a>' in page
        assert get_page(c, f"/console/runbooks/{name}.md").count(f"<h1>{name}</h1>") == 1

    monkeypatch.setenv("FLOWER_URL", "https://flower.example.invalid/")
    monkeypatch.setenv("GRAFANA_URL", "javascript:alert(1)")  # not a link we would render
    monkeypatch.setenv(
        "RUNBOOK_BASE_URL", "https://git.example.invalid/stockflow/monitoring/runbooks"
    )
    page = get_page(c)
    assert 'href="https://flower.example.invalid" rel="noopener" id="link-flower"' in page
    assert 'href="http://127.0.0.1:3000" rel="noopener" id="link-grafana"' in page
    assert (
        'href="https://git.example.invalid/stockflow/monitoring/runbooks/" id="link-runbooks"'
        in page
    )
    assert (
        '<a href="https://git.example.invalid/stockflow/monitoring/runbooks/LedgerInvariantViolated.md">'
        "LedgerInvariantViolated</a>"
    ) in page


def test_runbooks_are_served_from_the_repository_folder(transactional_db, monkeypatch, tmp_path):
    (tmp_path / "JobsFailing.md").write_text(
        "# Jobs failing\n<check the workers>\n\n1. **first** `make check-ledger`\n"
        "2. <script>alert(1)</script>\n"
    )
    (tmp_path / "notes.txt").write_text("not a runbook")
    monkeypatch.setattr(views, "RUNBOOK_DIR", tmp_path)
    c = staff_client()
    index = get_page(c, "/console/runbooks/")
    assert 'href="/console/runbooks/JobsFailing.md"' in index and "notes.txt" not in index
    page = get_page(c, "/console/runbooks/JobsFailing.md")
    # Rendered from markdown; raw HTML in the file is shown as text, never run.
    assert "<h1>Jobs failing</h1>" in page and "# Jobs failing" not in page
    assert "<strong>first</strong> <code>make check-ledger</code>" in page
    assert "&lt;check the workers&gt;" in page
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert "LedgerInvariantViolated" not in get_page(c)  # no such file here: no contextual link
    for bad in ("notes.txt", "..%2Fsettings.py", "missing.md"):
        assert c.get(f"/console/runbooks/{bad}").status_code == 404


# --- admin ---------------------------------------------------------------------------


def test_every_model_is_in_the_admin_and_the_ledger_and_jobs_are_read_only(transactional_db):
    for model in (
        Product,
        Location,
        Batch,
        StockOnHand,
        StockMove,
        Sale,
        SaleLine,
        Refund,
        RefundLine,
        Job,
        ApiToken,
        AuditEntry,
        Lead,
    ):
        assert admin.site.is_registered(model), model
    b = batch("ADM", "L1", 3, 10)
    move = StockMove.objects.get(batch=b)
    j = job(a_sale(), Job.Status.FAILED, code="error")
    c = staff_client()  # a superuser: read-only holds for everyone
    for url, obj_url in (
        ("/admin/stock/stockmove/", f"/admin/stock/stockmove/{move.pk}/"),
        ("/admin/stock/job/", f"/admin/stock/job/{j.pk}/"),
        ("/admin/stock/stockonhand/", f"/admin/stock/stockonhand/{b.on_hand.pk}/"),
    ):
        assert c.get(url).status_code == 200
        assert c.get(url + "add/").status_code == 403
        change = c.get(obj_url + "change/")
        assert change.status_code == 200 and 'name="_save"' not in change.content.decode()
        assert c.post(obj_url + "change/", {}).status_code == 403
        assert c.post(obj_url + "delete/", {"post": "yes"}).status_code == 403
    assert StockMove.objects.filter(pk=move.pk).exists() and Job.objects.filter(pk=j.pk).exists()
    assert (
        f'href="/console/jobs/{j.pk}/"'
        in c.get(f"/admin/stock/job/{j.pk}/change/").content.decode()
    )
    # Products stay editable.
    assert c.get("/admin/stock/product/add/").status_code == 200


def test_admin_pages_of_the_former_stock_apps_redirect_to_the_stock_app(transactional_db):
    j = job(a_sale("ADMOLD"), Job.Status.FAILED, code="error")
    c = staff_client()
    for old, new in (
        (f"/admin/jobs/job/{j.pk}/change/", f"/admin/stock/job/{j.pk}/change/"),
        ("/admin/inventory/stockmove/?kind=RECEIPT", "/admin/stock/stockmove/?kind=RECEIPT"),
        ("/admin/sales/sale/", "/admin/stock/sale/"),
    ):
        r = c.get(old)
        assert (r.status_code, r.headers["Location"]) == (301, new)
        assert c.get(new).status_code == 200


def test_every_admin_list_and_detail_page_renders(transactional_db):
    b = batch("ADMR", "L1", 5, 10)
    s = a_sale("ADMR")
    j = job(s, Job.Status.SUCCEEDED, kind=Job.Kind.SALE_REFUND)
    r = Refund.objects.create(sale=s, kind="full", idempotency_key="k1", job=j)
    RefundLine.objects.create(refund=r, sale_line=s.lines.get(), quantity=1)
    AuditEntry.objects.create(
        token_name="t",
        action="sale.refund",
        sale_id=s.pk,
        request_id="rq",
        outcome="accepted",
        status_code=202,
        job_id=j.pk,
    )
    Lead.objects.create(name="N", email="n@example.invalid", client_hash="abc")
    ApiToken.issue("t")
    c = staff_client()
    for model in admin.site._registry:
        if model._meta.app_label in ("auth",):
            continue
        base = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
        listing = c.get(base)
        assert listing.status_code == 200, base
        obj = model.objects.first()
        assert obj is not None, model
        assert c.get(f"{base}{obj.pk}/change/").status_code == 200, base
    assert b.pk


def test_api_token_admin_never_shows_the_hash_and_can_revoke(transactional_db):
    tok, raw = ApiToken.issue("ci-bot", scopes=["read"])
    c = staff_client()
    for url in ("/admin/core/apitoken/", f"/admin/core/apitoken/{tok.pk}/change/"):
        page = c.get(url).content.decode()
        assert "ci-bot" in page
        assert tok.token_hash not in page and raw not in page and "token_hash" not in page
    assert c.get("/admin/core/apitoken/add/").status_code == 403
    r = c.post("/admin/core/apitoken/", {"action": "revoke_tokens", "_selected_action": [tok.pk]})
    assert r.status_code == 302
    tok.refresh_from_db()
    assert tok.revoked_at is not None


# --- the real stack --------------------------------------------------------------------


def test_console_after_a_real_run_matches_the_database(client, worker):
    """Sales paid through the API and done by a real Celery worker process."""
    product(client, "RUN-1")
    receive(client, "RUN-1", "EXP", 5, -2)  # expired: never sold
    receive(client, "RUN-1", "A", 3, 10)
    receive(client, "RUN-1", "B", 10, 60)
    ok_sale = sale(client, "RUN-OK", [("RUN-1", 4)])
    assert pay_and_wait(client, ok_sale["id"])["status"] == "succeeded"
    short = sale(client, "RUN-SHORT", [("RUN-1", 50)])
    failed = pay_and_wait(client, short["id"])
    assert failed["error"]["code"] == "insufficient_stock"
    r = refund(client, ok_sale["id"], "refund-1")
    assert r.status_code == 202, r.text
    refunded = wait_for_job(client, r.json()["job"]["id"])
    assert refunded["status"] == "succeeded"

    c = staff_client()
    page = get_page(c)
    assert number(page, "jobs-sale.paid-succeeded") == 1
    assert number(page, "jobs-sale.paid-failed") == 1
    assert number(page, "jobs-sale.refund-succeeded") == 1
    assert number(page, "jobs-all-total") == Job.objects.count() == 3
    rows = failure_rows(page)
    assert list(rows) == [failed["id"]]
    assert "insufficient_stock" in rows[failed["id"]] and failed["request_id"] in rows[failed["id"]]
    assert text_of(page, "a1-verdict") == "NO DATA"  # no ledger check has run yet
    c.post("/console/ledger/recompute/")
    page = get_page(c)
    assert text_of(page, "a1-verdict") == "PASS"
    assert text_of(page, "a2-verdict") == "PASS"
    assert text_of(page, "a2-success-figure").startswith("100.00 % = 1 succeeded")
    assert text_of(page, "a2-business") == "1"
    shown = {bid: qty for bid, (_, qty, _) in stock_rows(page).items()}
    assert shown == dict(StockOnHand.objects.values_list("batch_id", "quantity"))
    assert sorted(shown.values()) == sorted(on_hand(client, "RUN-1").values())

    # The paid job's page lists the SALE_OUT moves it wrote; the refund's page its REFUND_IN.
    paid_job = Job.objects.get(sale_id=ok_sale["id"], kind="sale.paid")
    page = get_page(c, f"/console/jobs/{paid_job.pk}/")
    assert number(page, "moves-total") == -4
    page = get_page(c, f"/console/jobs/{refunded['id']}/")
    assert number(page, "moves-total") == 4 and "REFUND_IN" in page
    assert Refund.objects.count() == 1 and RefundLine.objects.count() == 1
    page = get_page(c, f"/console/jobs/{failed['id']}/")
    assert text_of(page, "job-error-code") == "insufficient_stock"
    assert text_of(page, "job-request-id") == failed["request_id"]
    assert "no-moves" in page
