"""A scripted run against the web and a prefork worker (concurrency 2): both expositions
show the catalogue with exactly the expected increments, pass `promtool check metrics`,
and keep label cardinality bounded. And the committed scrape snapshot that rules and
dashboards are checked against (monitoring/scraped-metric-names.txt) names only what a real
web, worker and celery-exporter expose."""

import time
from pathlib import Path

import httpx
import pytest

from harness.processes import free_port
from monitoring.snapshot import (
    SNAPSHOT,
    STOCKFLOW_TARGETS,
    exposition_names,
    names_of,
    read_snapshot,
)
from tests import faults
from tests.api_helpers import ok, pay, pay_and_wait, product, receive, refund, sale, wait_for_job
from tests.conftest import ScriptProcess, script_env
from tests.metrics_helpers import (
    cardinality_problems,
    promtool_check,
    samples,
    scrape,
    value,
)

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-metrics-token"


def url_templates() -> set[str]:
    """Every route template the URLconf can match, e.g. /api/sales/<int:sale_id>/transition."""
    from django.urls import URLPattern, URLResolver, get_resolver

    def walk(patterns, prefix=""):
        for p in patterns:
            route = prefix + str(p.pattern)
            if isinstance(p, URLResolver):
                yield from walk(p.url_patterns, route)
            elif isinstance(p, URLPattern):
                yield "/" + route

    return set(walk(get_resolver().url_patterns))


@pytest.fixture
def metered_worker(worker_factory):
    port = free_port()
    w = worker_factory(concurrency=2, WORKER_METRICS_PORT=port)
    w.metrics_url = f"http://127.0.0.1:{port}/metrics"
    return w


def test_scripted_run_counts_exactly_across_prefork_children(
    client, live_server, metered_worker, tmp_path
):
    web_url = f"{live_server.url}/metrics"
    web0 = samples(scrape(web_url, TOKEN))

    product(client, "MET")
    receive(client, "MET", "OLD", 5, -2)  # expired
    receive(client, "MET", "A", 10, 20)
    ok_sales = [sale(client, f"M-{i}", [("MET", 2)]) for i in range(4)]
    short = sale(client, "M-SHORT", [("MET", 50)])
    expired_only = sale(client, "M-EXP", [("MET", 4)])

    jobs = [pay(client, s["id"]) for s in ok_sales] + [pay(client, short["id"])]
    finished = [wait_for_job(client, j["id"]) for j in jobs]
    assert [j["status"] for j in finished] == ["succeeded"] * 4 + ["failed"]
    # 2 sellable units left, 4 wanted, 5 expired would cover it: expired_batch.
    finished.append(wait_for_job(client, pay(client, expired_only["id"])["id"]))
    assert finished[-1]["error"]["code"] == "expired_batch"

    line = ok_sales[0]["lines"][0]["id"]
    partial = ok(
        refund(
            client, ok_sales[0]["id"], "r-1", "partial", [{"sale_line_id": line, "quantity": 1}]
        ),
        202,
    )
    full = ok(refund(client, ok_sales[1]["id"], "r-2"), 202)
    for j in (partial, full):
        assert wait_for_job(client, j["job"]["id"])["status"] == "succeeded"
    over = refund(
        client, ok_sales[0]["id"], "r-3", "partial", [{"sale_line_id": line, "quantity": 5}]
    )
    assert over.status_code == 422
    conflict = refund(client, ok_sales[0]["id"], "r-1", "full")
    assert conflict.status_code == 409

    worker_text = scrape(metered_worker.metrics_url)
    web_text = scrape(web_url, TOKEN)
    w, web = samples(worker_text), samples(web_text)

    # Worker: 8 run_job tasks (6 paid + 2 refunds) over two prefork children add up exactly.
    children = {p.name.split("_")[-1] for p in Path(tmp_path / "prom-w1").glob("counter_*.db")}
    assert len(children) >= 2, f"expected files from both pool children, got {children}"
    assert (
        value(w, "celery_task_outcomes_total", task="stockflow.run_job", outcome="succeeded") == 8
    )
    assert value(w, "celery_task_attempts_total", task="stockflow.run_job") == 8
    assert value(w, "celery_task_queue_wait_seconds_count", task="stockflow.run_job") == 8
    assert (
        value(
            w, "celery_task_duration_seconds_count", task="stockflow.run_job", outcome="succeeded"
        )
        == 8
    )
    assert value(w, "sales_paid_stock_consume_total", result="success") == 4
    assert value(w, "sales_paid_stock_consume_total", result="insufficient_stock") == 1
    assert value(w, "sales_paid_stock_consume_total", result="expired_batch") == 1
    assert value(w, "sales_paid_stock_consume_duration_seconds_count") == 6
    assert (
        value(w, "sales_transition_total", from_status="draft", to_status="paid", result="success")
        == 4
    )
    assert value(w, "sale_refunds_total", type="partial", result="success") == 1
    assert value(w, "sale_refunds_total", type="full", result="success") == 1
    assert value(w, "sale_refund_stock_moves_created_total", type="full") == 1
    assert (
        value(
            w,
            "stockflow_jobs_finished_total",
            kind="sale.paid",
            status="failed",
            code="insufficient_stock",
        )
        == 1
    )

    def delta(name, **labels):
        return value(web, name, **labels) - value(web0, name, **labels)

    # Web: the API side of the same run.
    assert (
        delta("sales_transition_total", from_status="draft", to_status="paid", result="accepted")
        == 6
    )
    assert (
        delta(
            "http_requests_total",
            route="/api/sales/<int:sale_id>/transition",
            method="POST",
            status="202",
        )
        == 6
    )
    assert (
        delta(
            "http_requests_total",
            route="/api/sales/<int:sale_id>/refunds",
            method="POST",
            status="422",
        )
        == 1
    )
    assert delta("sale_refund_over_refund_attempts_total") == 1
    assert delta("sale_refund_idempotency_conflicts_total") == 1
    assert delta("sale_refunds_total", type="partial", result="over_refund") == 1
    assert value(web, "stockflow_jobs", status="queued") == 0

    for text in (worker_text, web_text):
        promtool_check(text)
        assert cardinality_problems(samples(text)) == []
    # Bounded by construction: routes are URL templates, methods and statuses small sets.
    # (The web registry here is the whole test session's, fuzzing included: hence no small total.)
    routes = {dict(labels)["route"] for (name, labels) in web if name == "http_requests_total"}
    assert routes <= url_templates() | {"<unmatched>"}, routes - url_templates()
    methods = {dict(labels)["method"] for (name, labels) in web if name == "http_requests_total"}
    assert methods <= {
        "GET",
        "POST",
        "PUT",
        "PATCH",
        "DELETE",
        "HEAD",
        "OPTIONS",
        "other",
    }  # fuzzing sends QUERY etc.
    assert len(w) < 600, "worker series count must stay bounded"


def test_metrics_endpoint_needs_the_token(anon_client):
    assert anon_client.get("/metrics").status_code == 401
    assert anon_client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401


# --- the scrape snapshot names only what really exists -------------------------------------------


@pytest.fixture
def faulty_worker(worker_factory):
    """A prefork worker on which a held row lock is a transient fault: lock waits give up
    after 200 ms (libpq reads PGOPTIONS), one retry within a second, then the job fails."""
    port = free_port()
    w = worker_factory(
        concurrency=2,
        WORKER_METRICS_PORT=port,
        PGOPTIONS="-c lock_timeout=200",
        JOB_MAX_RETRIES=1,
        JOB_RETRY_BACKOFF_MAX_SECONDS=1,
    )
    w.metrics_url = f"http://127.0.0.1:{port}/metrics"
    return w


def test_snapshot_names_of_web_and_worker_are_in_their_live_expositions(
    client, live_server, faulty_worker
):
    """The outcomes of monitoring/integration.py's run, failures included (a retry, jobs failing
    with `error`, a refund rolled back), on a real web and worker; then every name the snapshot
    lists for web or worker must be in that process's live `# TYPE` lines or samples. A metric
    renamed or dropped in code fails here until the snapshot is regenerated."""
    product(client, "SNAP")
    batch = receive(client, "SNAP", "L1", 20, 30)
    sold, kept, stuck = (sale(client, f"SNAP-{n}", [("SNAP", 2)]) for n in range(3))
    short = sale(client, "SNAP-SHORT", [("SNAP", 500)])
    assert [pay_and_wait(client, s["id"])["status"] for s in (sold, kept, short)] == [
        "succeeded"
    ] * 2 + ["failed"]
    assert (
        wait_for_job(client, ok(refund(client, sold["id"], "snap-1"), 202)["job"]["id"])["status"]
        == "succeeded"
    )
    with faults.lock_holder() as holder:
        # The stock row both jobs lock after the sale: each attempt times out, is retried once, fails.
        holder.execute(
            "SELECT 1 FROM inventory_stockonhand WHERE batch_id = %s FOR UPDATE",
            [batch["batch_id"]],
        )
        jobs = [
            pay(client, stuck["id"])["id"],
            ok(refund(client, kept["id"], "snap-2"), 202)["job"]["id"],
        ]
        failed = [wait_for_job(client, j) for j in jobs]
        holder.rollback()
    assert [(j["status"], j["error"]["code"], j["attempts"]) for j in failed] == [
        ("failed", "error", 2)
    ] * 2, failed

    live = {
        "web": exposition_names(scrape(f"{live_server.url}/metrics", TOKEN)),
        "worker": exposition_names(scrape(faulty_worker.metrics_url)),
    }
    snapshot = read_snapshot()
    for target in STOCKFLOW_TARGETS:
        unknown = names_of(*snapshot[target]) - names_of(*live[target])
        assert not unknown, (
            f"{SNAPSHOT.name} lists {target} names the live {target} does not expose: "
            f"{sorted(unknown)}; regenerate it: monitoring/integration.py --write-snapshot"
        )
    # The failure paths are real in this worker too, not only declared.
    worker_samples = live["worker"][1]
    assert {
        "exceptions_total",
        "celery_task_retries_total",
        "sale_refund_rollback_total",
    } <= worker_samples
    # ... and labelled by what happened: the retries by their cause, the failures by the
    # database error inside the TransientError (which survives Celery's pickling).
    parsed = samples(scrape(faulty_worker.metrics_url))
    assert (
        value(parsed, "celery_task_retries_total", task="stockflow.run_job", reason="lock_timeout")
        == 2
    ), parsed
    assert (
        value(parsed, "exceptions_total", exception_type="LockNotAvailable", location="worker") == 2
    ), parsed


@pytest.mark.usefixtures("exporter_venv")
def test_snapshot_names_of_the_exporter_are_in_its_live_exposition(tmp_path, broker):
    """bin/celery-exporter as the Procfile starts it, on the test broker: its `# TYPE` lines
    declare every family, samples or not; the snapshot's exporter names must all be there."""
    port = free_port()
    proc = ScriptProcess(
        tmp_path,
        "celery-exporter",
        [str(ROOT / "bin" / "celery-exporter")],
        script_env(EXPORTER_PORT=port, EXPORTER_ADDRESS="127.0.0.1"),
    )
    try:
        deadline, text = time.monotonic() + 60, ""
        while time.monotonic() < deadline and not text:
            proc.check_alive()
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
                text = r.text if r.status_code == 200 else ""
            except httpx.HTTPError:
                time.sleep(0.3)
        assert text, f"celery-exporter /metrics did not answer:\n{proc.log()[-3000:]}"
    finally:
        proc.stop()
    unknown = names_of(*read_snapshot()["celery-exporter"]) - names_of(*exposition_names(text))
    assert not unknown, (
        f"{SNAPSHOT.name} lists exporter names celery-exporter does not expose: {sorted(unknown)}"
    )
