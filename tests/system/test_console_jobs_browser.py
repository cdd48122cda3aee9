"""An operator in headless Chromium finds a failed job in the console by its request id
and retries it: a sale paid through the API fails with `error` in a real Celery worker
(a PostgreSQL trigger refuses the sale's UPDATE to `paid`), the fault is repaired (the
trigger dropped), the operator clicks Retry and sees the same job succeed.

Screenshots: test-output/console-job-search.png, test-output/console-job-retried.png.
"""

import re
import threading
import time

from django.db import connection

from tests.api_helpers import pay, product, receive, sale, wait_for_job
from tests.browser import OUTPUT
from tests.faults import allow_paid, reject_paid
from tests.staff import STAFF_PASSWORD, make_staff


def _off_the_browser_thread(fn) -> None:
    """Run a database call in a thread of its own: Django refuses ORM calls in the thread
    where Playwright's event loop runs."""

    def run():
        try:
            fn()
        finally:
            connection.close()

    t = threading.Thread(target=run)
    t.start()
    t.join(30)


def test_operator_finds_a_failed_job_by_request_id_and_retries_it(
    client, worker, live_server, launch_chromium
):
    product(client, "BRJ-1", "Saline 0.9 %")
    receive(client, "BRJ-1", "LOT-1", 10, 90)
    s = sale(client, "BRJ-S1", [("BRJ-1", 3)])
    reject_paid("BRJ-S1")
    try:
        job = pay(client, s["id"], **{"X-Request-ID": "night-shift-req-42"})
        failed = wait_for_job(client, job["id"])
        assert failed["status"] == "failed" and failed["error"]["code"] == "error", failed
        assert failed["request_id"] == "night-shift-req-42"
        make_staff("browser-night-ops", superuser=False)
        OUTPUT.mkdir(parents=True, exist_ok=True)

        browser = launch_chromium()  # from here on: no ORM in this thread
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        bad_responses = []
        page.on(
            "response",
            lambda r: bad_responses.append((r.status, r.url)) if r.status >= 400 else None,
        )
        page.goto(f"{live_server.url}/console/")
        page.fill("#id_username", "browser-night-ops")
        page.fill("#id_password", STAFF_PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url(f"{live_server.url}/console/")

        # The search box in the header: the request id from a customer's complaint.
        page.fill("#job-search", "night-shift-req-42")
        page.press("#job-search", "Enter")
        page.wait_for_url(re.compile(r".*/console/jobs/\?q=night-shift-req-42$"))
        rows = page.locator("#job-list tr[data-job]")
        assert rows.count() == 1
        row = rows.first
        assert row.get_attribute("data-job") == job["id"]
        assert row.locator("td.status").inner_text().strip() == "failed"
        assert row.locator("td.code").inner_text().strip() == "error"
        assert row.locator("td.rid").inner_text().strip() == "night-shift-req-42"
        page.screenshot(path=str(OUTPUT / "console-job-search.png"), full_page=True)

        row.locator("a").first.click()
        page.wait_for_url(f"{live_server.url}/console/jobs/{job['id']}/")

        def shown(testid: str) -> str:
            return page.locator(f'[data-testid="{testid}"]').inner_text().strip()

        assert shown("job-status") == "failed" and shown("job-error-code") == "error"
        assert "payment hook down" in shown("job-error-message")
        assert page.locator('[data-testid="job-resend"]').count() == 0

        _off_the_browser_thread(allow_paid)  # the fault is repaired
        page.click('[data-testid="job-retry"]')
        page.wait_for_url(f"{live_server.url}/console/jobs/{job['id']}/")
        assert "queued again" in shown("messages")
        deadline = time.monotonic() + 30
        while shown("job-status") != "succeeded" and time.monotonic() < deadline:
            time.sleep(0.5)
            page.reload()
        assert shown("job-status") == "succeeded"
        assert shown("job-attempts") == str(failed["attempts"] + 1)
        assert page.locator('[data-testid="job-retry"]').count() == 0
        assert page.locator("#moves-table tr[data-move]").count() == 1
        assert shown("moves-total") == "-3"
        page.screenshot(path=str(OUTPUT / "console-job-retried.png"), full_page=True)
        assert bad_responses == [], bad_responses
    finally:
        _off_the_browser_thread(allow_paid)

    done = wait_for_job(client, job["id"])  # the API agrees (HTTP, not the ORM)
    assert done["status"] == "succeeded" and done["attempts"] == failed["attempts"] + 1
    assert (OUTPUT / "console-job-search.png").stat().st_size > 10_000
    assert (OUTPUT / "console-job-retried.png").stat().st_size > 10_000
