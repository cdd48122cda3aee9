"""The ops console in a real browser: headless Chromium (Debian's `chromium` package)
driven by Playwright's Python package — no browser download.

A scripted run goes through the real stack (API over HTTP, a real Celery worker
process): sales paid (two succeed, one runs short of stock), a refund. Then the
browser logs in as a staff user at the admin login form, opens the console, and the
figures it shows are compared with the database; it clicks through a failure to its
job page. Screenshots go to test-output/ (git-ignored).

Environment: CHROMIUM_PATH (default /usr/bin/chromium). Without Chromium or the
playwright package the test is skipped locally and fails in CI (CI=true).
"""

import re

from stockflow.platform import redis_client
from stockflow.stock import invariants
from stockflow.stock.models import Job, StockMove, StockOnHand
from tests.api_helpers import pay_and_wait, product, receive, refund, sale, wait_for_job
from tests.browser import OUTPUT
from tests.staff import STAFF_PASSWORD, make_staff


def scripted_run(client) -> dict:
    """Through the API, done by the worker: 2 sales paid, 1 short of stock, 1 refund."""
    product(client, "BRW-1", "Saline 0.9 %")
    product(client, "BRW-2", "Gauze")
    receive(client, "BRW-1", "EXPIRED", 4, -3)  # expired: shown red, never sold
    receive(client, "BRW-1", "SOON", 10, 12)  # expires within 30 days: shown amber
    receive(client, "BRW-1", "LATER", 20, 200)
    receive(client, "BRW-2", "G1", 6, None)  # never expires
    s1 = sale(client, "BRW-S1", [("BRW-1", 7), ("BRW-2", 2)])
    s2 = sale(client, "BRW-S2", [("BRW-1", 1)])
    s3 = sale(client, "BRW-S3", [("BRW-2", 50)])  # more than there is
    paid1, paid2 = pay_and_wait(client, s1["id"]), pay_and_wait(client, s2["id"])
    short = pay_and_wait(client, s3["id"])
    assert paid1["status"] == paid2["status"] == "succeeded", (paid1, paid2)
    assert short["status"] == "failed" and short["error"]["code"] == "insufficient_stock", short
    r = refund(client, s2["id"], "brw-refund-1")
    assert r.status_code == 202, r.text
    refunded = wait_for_job(client, r.json()["job"]["id"])
    assert refunded["status"] == "succeeded", refunded
    return {"short": short, "paid1": paid1}


def expected_from_database() -> dict:
    """What the console must show, counted here straight from the tables. Done before
    the browser starts: Django refuses ORM calls once Playwright's loop is running."""
    report = invariants.check()
    return {
        "jobs": {
            (k, s): Job.objects.filter(kind=k, status=s).count()
            for k in Job.Kind.values
            for s in Job.Status.values
        },
        "total": Job.objects.count(),
        "failed": {
            str(j.pk): (j.error_code, j.request_id) for j in Job.objects.filter(status="failed")
        },
        "on_hand": {str(b): q for b, q in StockOnHand.objects.values_list("batch_id", "quantity")},
        "states": {
            str(soh.batch_id): soh.batch.lot for soh in StockOnHand.objects.select_related("batch")
        },
        "ledger_clean": report.clean,
        "moves": StockMove.objects.count(),
    }


def test_console_in_chromium_shows_what_the_database_holds(
    client, worker, live_server, launch_chromium
):
    run = scripted_run(client)
    make_staff("browser-ops", superuser=False)
    redis_client.client().delete(invariants.VERDICT_KEY)  # no ledger check has run yet
    want = expected_from_database()
    assert want["ledger_clean"]
    OUTPUT.mkdir(parents=True, exist_ok=True)

    browser = launch_chromium()  # from here on: no ORM in this thread
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    console_errors = []
    page.on(
        "console",
        lambda m: (
            console_errors.append((m.text, m.location.get("url"), page.url))
            if m.type == "error"
            else None
        ),
    )
    bad_responses = []
    page.on(
        "response", lambda r: bad_responses.append((r.status, r.url)) if r.status >= 400 else None
    )

    # Not logged in: the console sends the browser to the admin login form.
    page.goto(f"{live_server.url}/console/")
    assert page.url == f"{live_server.url}/admin/login/?next=/console/"
    page.fill("#id_username", "browser-ops")
    page.fill("#id_password", STAFF_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/console/")
    page.click("#windows a:text-is('24h')")
    page.wait_for_url(re.compile(r".*/console/\?window=24h$"))

    def shown(testid: str) -> str:
        return page.locator(f'[data-testid="{testid}"]').inner_text().strip()

    # Jobs by kind and status.
    for (kind, status), n in want["jobs"].items():
        assert int(shown(f"jobs-{kind}-{status}")) == n, (kind, status)
    assert int(shown("jobs-all-total")) == want["total"] == 4
    assert int(shown("jobs-all-failed")) == 1

    # Failures: the one job that ran short, with its error code and request id.
    rows = page.locator("#failures-table tr[data-job]")
    assert rows.count() == len(want["failed"]) == 1
    row = rows.first
    job_id = row.get_attribute("data-job")
    code, request_id = want["failed"][job_id]
    assert job_id == run["short"]["id"] and code == "insufficient_stock"
    assert row.locator("td.code").inner_text().strip() == code
    assert row.locator("td.rid").inner_text().strip() == request_id == run["short"]["request_id"]

    # Quality scenarios. The ledger verdict is the stored one (none yet): recompute it.
    assert shown("a1-verdict") == "NO DATA"
    page.click('[data-testid="a1-recompute"]')
    page.wait_for_url(re.compile(r".*/console/\?window=24h#quality$"))
    assert shown("a1-verdict") == "PASS"
    assert shown("a1-figure") == "0 violations of the ledger invariants"
    assert "Ledger check: no violation" in shown("messages")
    assert shown("a2-verdict") == "PASS"
    assert shown("a2-success-figure").startswith(
        "100.00 % = 2 succeeded / (2 succeeded + 0 failed with error)"
    )
    assert shown("a2-business") == "1"

    # Stock on hand per batch, and the expiry highlighting a person actually sees.
    stock = page.locator("#stock-table tr[data-batch]")
    seen = {
        stock.nth(i).get_attribute("data-batch"): int(
            stock.nth(i).locator("td.onhand").inner_text()
        )
        for i in range(stock.count())
    }
    assert seen == want["on_hand"]
    lots = {want["states"][b]: b for b in seen}
    bg = "el => getComputedStyle(el.querySelector('td')).backgroundColor"
    assert (
        page.locator(f'#stock-table tr[data-batch="{lots["EXPIRED"]}"]').evaluate(bg)
        == "rgb(255, 235, 238)"
    )
    assert (
        page.locator(f'#stock-table tr[data-batch="{lots["SOON"]}"]').evaluate(bg)
        == "rgb(255, 248, 225)"
    )
    assert page.locator(f'#stock-table tr[data-batch="{lots["LATER"]}"]').evaluate(bg) not in (
        "rgb(255, 235, 238)",
        "rgb(255, 248, 225)",
    )
    assert shown("expired-batches") == "1" and shown("expired-units") == "4"
    assert shown("soon-batches") == "1" and shown("soon-units") == "3"

    # The chart is there and drawn.
    assert page.locator("svg.chart rect[data-status='succeeded']").count() >= 1
    assert page.locator("svg.chart rect[data-status='failed']").count() == 1

    page.screenshot(path=str(OUTPUT / "console.png"), full_page=True)

    # Click through the failure to its job page.
    row.locator("a").first.click()
    page.wait_for_url(f"{live_server.url}/console/jobs/{job_id}/")
    assert shown("job-id") == job_id
    assert shown("job-status") == "failed"
    assert shown("job-error-code") == "insufficient_stock"
    assert shown("job-request-id") == request_id
    assert page.locator('[data-testid="no-moves"]').count() == 1  # all or nothing: it wrote no move
    page.screenshot(path=str(OUTPUT / "console-job.png"), full_page=True)

    # From the job page back, and to a succeeded job's moves through the sale's history.
    page.goto(f"{live_server.url}/console/jobs/{run['paid1']['id']}/")
    assert page.locator("#moves-table tr[data-move]").count() == len(
        run["paid1"]["result"]["moves"]
    )
    assert int(shown("moves-total")) == -9

    # The runbook next to A1 opens from the console.
    page.goto(f"{live_server.url}/console/")
    page.locator("#a1 .runbooks a").first.click()
    page.wait_for_url(f"{live_server.url}/console/runbooks/LedgerInvariantViolated.md")
    assert shown("runbook-text").startswith("LedgerInvariantViolated")  # rendered: a heading
    assert page.locator('[data-testid="runbook-text"] h1').inner_text() == "LedgerInvariantViolated"

    # The admin login page has no favicon link, so the browser asks for /favicon.ico (404);
    # the console's own pages declare an empty icon. Anything else is an error.
    console_errors = [
        e
        for e in console_errors
        if not (e[1] or "").endswith("/favicon.ico") or "/console/" in e[2].split("?")[0]
    ]
    assert bad_responses == [] and console_errors == [], (bad_responses, console_errors)
    assert (OUTPUT / "console.png").stat().st_size > 10_000
