"""The console's job list (search, filters, pages), the paged overview lists, times on a
location's clock, and the operator actions on a job page (retry, re-send): staff only,
CSRF-protected, audited as `staff:<username>`, run by a real Celery worker process."""

import datetime
import re
import time
import uuid

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client

from harness import client as api
from stockflow.accounts.models import AuditEntry
from stockflow.stock.models import Job, Location, StockMove
from tests import faults
from tests.api_helpers import ok, pay, product, receive, sale, wait_for_job
from tests.console_helpers import a_sale, batch, get_page, job, staff_client, text_of
from tests.faults import allow_paid, reject_paid
from tests.staff import STAFF_PASSWORD, make_staff


@pytest.fixture
def paid_rejected(transactional_db):
    yield reject_paid
    allow_paid()


def listed(page: str, table="job-list") -> list[str]:
    """Job ids in a list table, in the order shown."""
    body = re.search(rf'<table id="{table}">(.*?)</table>', page, re.S)
    return re.findall(r'<tr data-job="([0-9a-f-]{36})">', body.group(1)) if body else []


def messages_of(page: str) -> str:
    return text_of(page, "messages") if 'data-testid="messages"' in page else ""


def csrf_client(username="ops") -> tuple[Client, str]:
    """A staff session that must send the CSRF token, and that token (from a page's form)."""
    c = Client(enforce_csrf_checks=True)
    c.force_login(make_staff(username))
    page = get_page(c, "/console/")
    return c, re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)


# --- search, filters, pages -----------------------------------------------------------------


def test_one_search_field_finds_a_job_by_request_id_sale_number_or_job_id(transactional_db):
    s1, s2 = a_sale(), a_sale()
    wanted = job(s1, Job.Status.FAILED, code="error", request_id="req-search-1", age_min=3)
    sibling = job(s1, Job.Status.SUCCEEDED, kind=Job.Kind.SALE_REFUND, age_min=2)
    other = job(s2, Job.Status.SUCCEEDED, request_id="req-search-2", age_min=1)
    c = staff_client()

    assert listed(get_page(c, "/console/jobs/", q="req-search-1")) == [str(wanted.pk)]
    assert listed(get_page(c, "/console/jobs/", q=f"  {s1.number} ")) == [
        str(sibling.pk),
        str(wanted.pk),
    ], "every job of the sale, newest first"
    assert listed(get_page(c, "/console/jobs/", q=str(other.pk))) == [str(other.pk)]
    assert listed(get_page(c, "/console/jobs/", q=str(other.pk).upper())) == [str(other.pk)]
    page = get_page(c, "/console/jobs/", q="no-such-thing")
    assert listed(page) == [] and "no-jobs" in page
    assert "<code>no-such-thing</code>" in page
    # The box is on every console page and sends its text to the list.
    overview = get_page(c)
    assert '<form class="search" method="get" action="/console/jobs/"' in overview
    assert 'name="q" id="job-search"' in overview
    # Search text is text: escaped, never an error.
    page = get_page(c, "/console/jobs/", q="<script>x</script>' OR 1=1 --")
    assert listed(page) == [] and "<script>x" not in page


def test_job_list_filters_by_status_kind_and_error_code(transactional_db):
    s = a_sale()
    err = job(s, Job.Status.FAILED, code="error", age_min=5)
    short = job(s, Job.Status.FAILED, code="insufficient_stock", age_min=4)
    refund_err = job(s, Job.Status.FAILED, kind=Job.Kind.SALE_REFUND, code="error", age_min=3)
    done = job(s, Job.Status.SUCCEEDED, age_min=2)
    queued = job(a_sale(), Job.Status.QUEUED, age_min=1)
    c = staff_client()
    everything = [str(j.pk) for j in (queued, done, refund_err, short, err)]
    assert listed(get_page(c, "/console/jobs/")) == everything, "newest first"
    assert listed(get_page(c, "/console/jobs/", status="failed")) == everything[2:]
    assert listed(get_page(c, "/console/jobs/", status="failed", code="error")) == [
        str(refund_err.pk),
        str(err.pk),
    ]
    assert listed(get_page(c, "/console/jobs/", kind="sale.refund")) == [str(refund_err.pk)]
    assert listed(get_page(c, "/console/jobs/", code="insufficient_stock", q=s.number)) == [
        str(short.pk)
    ]
    assert listed(get_page(c, "/console/jobs/", status="queued")) == [str(queued.pk)]
    # Unknown values are ignored: the whole list, not an error page.
    assert listed(get_page(c, "/console/jobs/", status="lost", kind="x", code="?")) == everything
    page = get_page(c, "/console/jobs/", status="failed", code="error")
    assert '<option value="failed" selected>' in page and '<option value="error" selected>' in page


def test_job_list_is_paged_newest_first_without_gaps_or_repeats(transactional_db):
    s = a_sale()
    for i in range(120):
        job(s, Job.Status.SUCCEEDED, age_min=200 - i)
    want = [
        str(pk) for pk in Job.objects.order_by("-created_at", "-id").values_list("pk", flat=True)
    ]
    c = staff_client()
    first = get_page(c, "/console/jobs/")
    assert text_of(first, "jobs-count") == "120" and text_of(first, "jobs-page") == "1"
    seen, page, n = [], first, 0
    while True:
        seen += listed(page)
        n += 1
        m = re.search(r'<a href="([^"]+)" rel="next" data-testid="jobs-next">', page)
        if not m:
            break
        page = get_page(c, "/console/jobs/" + m.group(1).replace("&amp;", "&"))
    assert n == 3 and seen == want
    # Filters stay on the page links.
    page = get_page(c, "/console/jobs/", status="succeeded")
    assert 'href="?status=succeeded&amp;page=2" rel="next"' in page
    # A page number out of range or not a number shows the nearest page.
    assert listed(get_page(c, "/console/jobs/", page="99")) == want[100:]
    assert listed(get_page(c, "/console/jobs/", page="x")) == want[:50]


def test_failures_and_stock_on_the_overview_are_paged_not_capped(transactional_db):
    s = a_sale()
    for i in range(60):
        job(s, Job.Status.FAILED, code="error", age_min=1 + i * 0.5)
    for i in range(130):
        batch(f"PG-{i:03d}", "L", 2, 10)  # all expire within 30 days
    batch("PG-OLD", "X", 5, -3)  # expired: FEFO puts it first
    c = staff_client()
    page = get_page(c)
    failures = listed(page, "failures-table")
    assert len(failures) == 50 and text_of(page, "failures-count") == "60"
    stock = re.findall(r'data-batch="(\d+)"', page)
    assert len(stock) == 100 and text_of(page, "stock-count") == "131"
    # The expiry summary counts every batch, not only the page shown.
    assert text_of(page, "soon-batches") == "130" and text_of(page, "soon-units") == "260"
    assert text_of(page, "expired-batches") == "1" and text_of(page, "expired-units") == "5"

    page2 = get_page(c, fpage="2", spage="2")
    assert len(set(listed(page2, "failures-table")) | set(failures)) == 60
    stock2 = re.findall(r'data-batch="(\d+)"', page2)
    assert len(stock2) == 31 and not set(stock2) & set(stock)
    # Paging one list keeps the other list's page and the window.
    page = get_page(c, window="24h", fpage="2")
    assert 'href="?window=24h&amp;fpage=2&amp;spage=2#stock" rel="next"' in page


# --- times on the location's clock ---------------------------------------------------------


def test_times_are_shown_in_the_locations_zone_with_utc_on_hover(transactional_db):
    Location.objects.create(code="TYO", timezone="Asia/Tokyo")  # UTC+9, no DST
    s = a_sale()
    s.location = Location.objects.get(code="TYO")
    s.save(update_fields=["location"])
    Location.objects.filter(code="MAIN").delete()  # a_sale's default location: unused now
    j = job(s, Job.Status.FAILED, code="error", age_min=2)
    utc = j.created_at.astimezone(datetime.UTC)
    tokyo = utc + datetime.timedelta(hours=9)
    c = staff_client()

    page = get_page(c)
    assert text_of(page, "zone-name") == "Asia/Tokyo"  # the only location's zone
    row = re.search(rf'<tr data-job="{j.pk}">(.*?)</tr>', page, re.S).group(1)
    assert (
        f'<time datetime="{utc.isoformat()}" title="{utc:%Y-%m-%d %H:%M:%S} UTC">'
        f"{tokyo:%m-%d %H:%M:%S}</time>"
    ) in row
    assert "time (Asia/Tokyo), one bar per minute" in page
    assert f"{tokyo:%H:%M} Asia/Tokyo = {utc:%H:%M} UTC" in page  # a bar's tooltip
    job_page = get_page(c, f"/console/jobs/{j.pk}/")
    assert f'title="{utc:%Y-%m-%d %H:%M:%S} UTC">{tokyo:%Y-%m-%d %H:%M:%S}' in job_page
    assert "Asia/Tokyo" in job_page

    # The operator may switch to UTC (kept for the session) and back.
    page = get_page(c, tz="UTC")
    assert text_of(page, "zone-name") == "UTC" and "time (UTC)" in page
    assert f">{utc:%Y-%m-%d %H:%M:%S}</time>" in get_page(c, "/console/jobs/")
    assert text_of(get_page(c, tz="TYO"), "zone-name") == "Asia/Tokyo"

    # A zone name stored by SQL that zoneinfo does not know: read as UTC, not a 500.
    with connection.cursor() as cursor:
        cursor.execute("UPDATE inventory_location SET timezone = 'Mars/Olympus_Mons'")
    page = get_page(c)
    assert text_of(page, "zone-name") == "UTC"
    assert c.get(f"/console/jobs/{j.pk}/").status_code == 200


# --- operator actions: refusals, CSRF, staff ------------------------------------------------


def test_actions_need_staff_a_post_and_the_csrf_token(transactional_db):
    j = job(a_sale(), Job.Status.FAILED, code="error")
    url = f"/console/jobs/{j.pk}/retry/"
    r = Client().post(url)
    assert r.status_code == 302 and r["Location"].startswith("/admin/login/")
    clerk = get_user_model().objects.create_user("clerk", "c@example.invalid", STAFF_PASSWORD)
    c = Client()
    c.force_login(clerk)
    assert c.post(url).status_code == 302  # not staff: to the login form

    c, token = csrf_client()
    assert c.get(url).status_code == 405
    assert c.post(url).status_code == 403, "no CSRF token, no action"
    assert c.post(f"/console/jobs/{j.pk}/resend/").status_code == 403
    j.refresh_from_db()
    assert j.status == "failed" and AuditEntry.objects.count() == 0

    # The job page offers the button as a CSRF-protected POST form.
    page = get_page(c, f"/console/jobs/{j.pk}/")
    form = re.search(rf'<form class="inline" method="post" action="{url}">(.*?)</form>', page, re.S)
    assert form and 'name="csrfmiddlewaretoken"' in form.group(1)
    assert 'data-testid="job-retry"' in form.group(1) and 'data-testid="job-resend"' not in page


def test_refusals_are_messages_and_audited_never_errors(transactional_db):
    s = a_sale()
    business = job(s, Job.Status.FAILED, code="insufficient_stock", age_min=3)
    succeeded = job(s, Job.Status.SUCCEEDED, age_min=2)
    exhausted = job(
        a_sale(), Job.Status.FAILED, code="error", attempts=settings.JOB_MAX_ATTEMPTS, age_min=1
    )
    c, token = csrf_client("night-ops")

    for target, action in (
        (business, "retry"),
        (succeeded, "retry"),
        (succeeded, "resend"),
        (exhausted, "retry"),
    ):
        r = c.post(
            f"/console/jobs/{target.pk}/{action}/",
            {"csrfmiddlewaretoken": token},
            HTTP_X_REQUEST_ID=f"console-{action}-{target.pk}",
        )
        assert r.status_code == 302 and r["Location"] == f"/console/jobs/{target.pk}/"
        page = get_page(c, r["Location"])
        assert "not_retryable" not in messages_of(page)  # the words, not the code
        assert messages_of(page), (action, target.status)
        target.refresh_from_db()
        assert target.status in ("failed", "succeeded") and target.attempts in (
            1,
            settings.JOB_MAX_ATTEMPTS,
        )
    page = get_page(c, f"/console/jobs/{business.pk}/")
    assert 'data-testid="job-retry"' not in page  # no button for a business failure
    assert "job-no-retry" in get_page(c, f"/console/jobs/{exhausted.pk}/")

    rows = list(
        AuditEntry.objects.order_by("created_at").values_list(
            "token_name", "action", "request_id", "outcome", "status_code", "job_id"
        )
    )
    assert rows == [
        ("staff:night-ops", "job.retry", f"console-retry-{business.pk}", "not_retryable", 409, business.pk),
        ("staff:night-ops", "job.retry", f"console-retry-{succeeded.pk}", "not_retryable", 409, succeeded.pk),
        ("staff:night-ops", "job.resend", f"console-resend-{succeeded.pk}", "not_retryable", 409, succeeded.pk),
        ("staff:night-ops", "job.retry", f"console-retry-{exhausted.pk}", "not_retryable", 409, exhausted.pk),
    ]  # fmt: skip

    missing = uuid.uuid4()
    r = c.post(f"/console/jobs/{missing}/retry/", {"csrfmiddlewaretoken": token})
    assert r.status_code == 302 and r["Location"] == "/console/jobs/"
    assert "not found" in messages_of(get_page(c, "/console/jobs/"))
    assert AuditEntry.objects.filter(job_id=missing, outcome="not_found", status_code=404).exists()


# --- operator actions against a real worker ------------------------------------------------


def test_retry_from_the_console_runs_a_failed_job_again_once_audited(client, worker, paid_rejected):
    product(client, "CJ-1")
    receive(client, "CJ-1", "L1", 5, 30)
    s = sale(client, "S-CJ-1", [("CJ-1", 2)])
    paid_rejected("S-CJ-1")
    paid = pay(client, s["id"])
    failed = wait_for_job(client, paid["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "error", failed
    c, token = csrf_client("night-ops")
    page = get_page(c, f"/console/jobs/{paid['id']}/")
    assert 'data-testid="job-retry"' in page

    allow_paid()  # the fault is repaired; the operator retries
    url = f"/console/jobs/{paid['id']}/retry/"
    r = c.post(url, {"csrfmiddlewaretoken": token}, HTTP_X_REQUEST_ID="console-retry-1")
    assert r.status_code == 302 and r["Location"] == f"/console/jobs/{paid['id']}/"
    # A second click before the worker is done: refused (the job is queued or running now).
    again = c.post(url, {"csrfmiddlewaretoken": token}, HTTP_X_REQUEST_ID="console-retry-2")
    assert again.status_code == 302
    done = wait_for_job(client, paid["id"])
    assert done["status"] == "succeeded", done
    assert done["attempts"] == failed["attempts"] + 1, "the same job, attempts continue"
    assert done["request_id"] == failed["request_id"]
    assert ok(api.get_sale(client, s["id"]), 200)["status"] == "paid"
    assert StockMove.objects.filter(sale_line__sale_id=s["id"]).count() == 1, "effect once"
    assert sum(StockMove.objects.filter(batch__lot="L1").values_list("quantity", flat=True)) == 3

    page = get_page(c, f"/console/jobs/{paid['id']}/")
    assert text_of(page, "job-status") == "succeeded"
    assert 'data-testid="job-retry"' not in page
    rows = list(
        AuditEntry.objects.filter(action="job.retry")
        .order_by("created_at")
        .values_list("token_name", "request_id", "outcome", "status_code", "job_id")
    )
    assert rows[0] == ("staff:night-ops", "console-retry-1", "accepted", 202, uuid.UUID(paid["id"]))
    assert rows[1][:4] == ("staff:night-ops", "console-retry-2", "not_retryable", 409)
    assert len(rows) == 2


def test_resend_from_the_console_publishes_a_stuck_job_now(client, worker_factory):
    product(client, "CJ-2")
    receive(client, "CJ-2", "L1", 5, 30)
    s = sale(client, "S-CJ-2", [("CJ-2", 1)])
    paid = pay(client, s["id"])
    # The broker lost the message (no beat here: nothing would re-send it).
    faults.lose_queued_messages()
    worker_factory()
    c, token = csrf_client()
    page = get_page(c, f"/console/jobs/{paid['id']}/")
    assert 'data-testid="job-resend"' in page and 'data-testid="job-retry"' not in page
    started = time.monotonic()
    r = c.post(
        f"/console/jobs/{paid['id']}/resend/",
        {"csrfmiddlewaretoken": token},
        HTTP_X_REQUEST_ID="console-resend-1",
    )
    assert r.status_code == 302
    assert "re-sent" in messages_of(get_page(c, r["Location"]))
    assert wait_for_job(client, paid["id"], timeout=15)["status"] == "succeeded"
    assert time.monotonic() - started < 15
    assert StockMove.objects.filter(sale_line__sale_id=s["id"]).count() == 1
    assert AuditEntry.objects.filter(
        action="job.resend",
        token_name="staff:ops",
        request_id="console-resend-1",
        outcome="accepted",
        status_code=202,
        job_id=paid["id"],
    ).exists()
