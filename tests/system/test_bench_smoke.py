"""`python -m bench --quick` runs end to end and prints a valid JSON summary; the floor app
carries stockflow's Celery settings and no stockflow code; the load generator and the demo
commands run against a stack.

A smoke test, not a timed one: the sizes are tiny and nothing here asserts speed. The
bench starts its own embedded PostgreSQL/Redis in a temp dir and its own web/worker
processes, so this test touches neither the suite's servers nor its database.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from harness.processes import Stack

ROOT = Path(__file__).resolve().parents[2]


def test_bench_quick_prints_json_summary(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--results-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(proc.stdout)  # stdout is exactly one JSON document
    assert "error" not in res

    floor = res["floor"]
    assert floor["completed"] == floor["tasks"] > 0 and floor["tasks_per_s"] > 0
    assert floor["task"] == "floor.noop"  # the bare app's task, not one on stockflow's app
    assert floor["settings"]["task_acks_late"] is True
    assert floor["settings"]["worker_prefetch_multiplier"] == 1
    cpu = floor["cpu_ms_per_task"]
    assert cpu["floor-worker"] > 0 and cpu["publisher"] > 0 and cpu["stack"] > 0

    e2e = res["e2e"]
    assert e2e["jobs_per_s"] > 0 and e2e["ratio_to_floor"] > 0
    assert e2e["cpu_ratio_floor_over_e2e"] > 0
    run = e2e["runs"][0]
    assert run["finished"] == run["jobs"] == run["outcomes"].get("succeeded")
    assert run["cpu_ms_per_job"]["worker"] > 0
    per = e2e["cpu_ms_per_job"]  # the stack: every process but the bench's (the load generator)
    assert abs(per["stack"] - sum(v for k, v in per.items() if k not in ("stack", "bench"))) < 0.05

    lat = res["accept_latency"]
    for path in ("async", "sync"):
        ms = lat[path]["latency_ms"]
        # A transport error under a burst is reported, not fatal: this is not a load test.
        assert lat[path]["ok"] >= 0.9 * lat[path]["requests"] > 0
        assert 0 < ms["p50"] <= ms["p95"] <= ms["p99"] <= ms["max"]
        assert lat[path]["generator"]["engine"] == "lean"
    assert lat["p99_ratio_sync_over_async"] > 0
    assert lat["sync"]["jobs"]["outcomes"].get("succeeded") >= lat["sync"]["ok"]
    assert res["loadgen"]["cpu_ms_per_request_max"] > 0

    jl = res["job_latency"]
    assert (
        jl["offered_rps"] > 0
        and 0 < jl["accept_to_finished_ms"]["p50"] <= jl["accept_to_finished_ms"]["p99"]
    )

    # Flash sale: stock for half the sales; exact outcomes on both paths, nothing oversold.
    flash = res["flash_sale"]
    half = flash["stock_covers"]
    for path in ("async", "sync"):
        run = flash[path]
        assert run["outcomes"] == {
            "succeeded": half,
            "failed:insufficient_stock": flash["sales"] - half,
        }, run["outcomes"]
        assert run["ok"] is True, run["checks"]
        assert run["stock"][0]["lot"] == "LOT-EXPIRED" and run["stock"][0]["sold"] == 0
        assert 0 < run["fcfs"]["of_them_succeeded"] <= run["fcfs"]["first_accepted"] == half
        assert all(v == 0 for v in run["deadlocks"].values())
    assert flash["ratio_async_over_sync"] > 0
    assert res["ledger"]["clean"] is True
    assert res["oversell"] == {
        "on_hand_not_negative": 0,
        "on_hand_equals_moves": 0,
        "flash_oversold_units": 0,
    }

    obs = res["observability"]
    assert obs["e2e_jobs_per_s_on"] > 0 and obs["e2e_jobs_per_s_off"] > 0
    assert isinstance(obs["cpu_cost"], float)

    stm = res["statements_per_paid_job"]
    assert stm["accept_path_web"]["per_job"] > 0 and stm["job_path_worker"]["per_job"] > 0

    mem = res["resources"]["peak_memory_mb"]
    assert mem["web"]["rss_mb"] > 0 and mem["worker"]["rss_mb"] > 0

    assert len(res["targets"]) == 11
    assert all(t["verdict"] in ("PASS", "FAIL") for t in res["targets"]), res["targets"]
    assert "PASS" in proc.stderr or "FAIL" in proc.stderr  # the short table

    written = json.loads(Path(res["results_file"]).read_text())
    assert written["targets"] == res["targets"]
    assert "stop_errors" not in res["teardown"] and "embedded_stop_error" not in res["teardown"]


def test_floor_app_is_bare_celery_with_stockflows_settings():
    """bench.floor_app: every delivery setting equals stockflow's (read from config/settings.py,
    which the assertion reads independently), and importing it loads no stockflow code."""
    code = """
import json, sys
from bench.floor_app import app
from config import settings
keys = {"task_acks_late": "CELERY_TASK_ACKS_LATE",
        "task_reject_on_worker_lost": "CELERY_TASK_REJECT_ON_WORKER_LOST",
        "worker_prefetch_multiplier": "CELERY_WORKER_PREFETCH_MULTIPLIER",
        "task_send_sent_event": "CELERY_TASK_SEND_SENT_EVENT",
        "worker_send_task_events": "CELERY_WORKER_SEND_TASK_EVENTS",
        "broker_url": "CELERY_BROKER_URL",
        "broker_transport_options": "CELERY_BROKER_TRANSPORT_OPTIONS",
        "task_serializer": "CELERY_TASK_SERIALIZER",
        "task_ignore_result": "CELERY_TASK_IGNORE_RESULT"}
print(json.dumps({
    "differ": [k for k, s in keys.items() if app.conf[k] != getattr(settings, s)],
    "fixups": list(app.fixups),
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("stockflow", "workers", "api", "tasks")),
}))
"""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == {"differ": [], "fixups": [], "loaded": []}


def test_bench_cpu_measures_both_paths_in_both_modes():
    """`python -m bench.cpu` (the lever figures of bench/README.md): every timed job
    succeeded (the child asserts it) and each (path, mode) has a CPU figure."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.cpu", "-n", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(proc.stdout)
    for path in ("accept", "job"):
        assert res[path]["off"]["n"] == res[path]["on"]["n"] == 5
        assert res[path]["off"]["cpu_ms"] > 0 and res[path]["on"]["cpu_ms"] > 0
        assert res[path]["on_over_off"] > 0


def test_loadgen_and_demo_commands_against_a_running_stack():
    """`python -m harness.loadgen` and `python -m harness.demo` drive a running stockflow over
    HTTP only: here web and a worker from harness.processes on embedded servers of their own."""
    stack = Stack(web_concurrency=1, prefix="sfsmoke.")  # short /tmp path: the PG socket
    try:
        stack.start_services()
        stack.migrate()
        web = stack.start_web()
        stack.start_worker()
        loadgen = subprocess.run(
            [sys.executable, "-m", "harness.loadgen", "--url", web.url,
             "--token", stack.api_token("loadgen"), "--rate", "0", "--count", "6", "--skus", "3",
             "--wait-jobs"],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert loadgen.returncode == 0, loadgen.stderr[-4000:]
        res = json.loads(loadgen.stdout)
        assert res["transitions"]["statuses"] == {"202": 6}
        assert res["jobs"]["outcomes"] == {"succeeded": 6}

        # The demo makes its token with manage.py: on the stack's servers, as `make demo` would.
        demo = subprocess.run(
            [sys.executable, "-m", "harness.demo", "--url", web.url],
            cwd=ROOT, env=stack.base_env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-4000:]
        assert "sale.paid: succeeded" in demo.stdout
        assert "sale.paid: failed (insufficient_stock)" in demo.stdout
        # It revoked the token it made: no all-scope `demo` token piles up per run.
        left = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c",
             "from stockflow.accounts.models import ApiToken;"
             "print(ApiToken.objects.filter(name__startswith='demo-').count(),"
             " ApiToken.objects.active().filter(name__startswith='demo-').count())"],
            cwd=ROOT, env=stack.base_env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        # The last line: the shell's own startup may log JSON lines on stdout before it.
        assert left.stdout.strip().splitlines()[-1].split() == ["1", "0"], (
            left.stdout + left.stderr[-2000:]
        )
    finally:
        stack.close()
