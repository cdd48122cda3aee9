"""`python -m bench --quick` runs end to end and prints a valid JSON summary; the load
generator and the demo commands run against a stack.

A smoke test, not a timed one: the sizes are tiny and nothing here asserts speed. The
bench starts its own embedded PostgreSQL/Redis in a temp dir and its own web/worker
processes, so this test touches neither the suite's servers nor its database.
"""

import json
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

    e2e = res["e2e"]
    assert e2e["jobs_per_s"] > 0 and e2e["ratio_to_floor"] > 0
    run = e2e["runs"][0]
    assert run["finished"] == run["jobs"] == run["outcomes"].get("succeeded")
    assert run["cpu_ms_per_job"]["worker"] > 0

    lat = res["accept_latency"]
    for path in ("async", "sync"):
        ms = lat[path]["latency_ms"]
        # A transport error under a burst is reported, not fatal: this is not a load test.
        assert lat[path]["ok"] >= 0.9 * lat[path]["requests"] > 0
        assert 0 < ms["p50"] <= ms["p95"] <= ms["p99"] <= ms["max"]
    assert lat["p99_ratio_sync_over_async"] > 0
    assert lat["sync"]["jobs"]["outcomes"].get("succeeded") >= lat["sync"]["ok"]

    hot = res["hot_sku"]
    assert hot["ratio_hot_over_spread"] > 0
    # Stock for half the hot sales: some succeed, the rest fail insufficient_stock, none oversold.
    assert hot["hot"]["outcomes"].get("succeeded", 0) > 0
    assert hot["hot"]["outcomes"].get("failed:insufficient_stock", 0) > 0
    assert hot["hot_sku_stock"]["oversold"] == 0
    assert all(v == 0 for r in ("hot", "spread") for v in hot[r]["deadlocks"].values())
    assert res["ledger"]["clean"] is True
    assert res["oversell"] == {
        "on_hand_not_negative": 0,
        "on_hand_equals_moves": 0,
        "hot_sku_oversold_units": 0,
    }

    obs = res["observability"]
    assert (
        obs["e2e_jobs_per_s_on"] > 0
        and obs["e2e_jobs_per_s_off"] > 0
        and isinstance(obs["cost"], float)
    )

    stm = res["statements_per_paid_job"]
    assert stm["accept_path_web"]["per_job"] > 0 and stm["job_path_worker"]["per_job"] > 0

    mem = res["resources"]["peak_memory_mb"]
    assert mem["web"]["rss_mb"] > 0 and mem["worker"]["rss_mb"] > 0

    assert [t["verdict"] in ("PASS", "FAIL") for t in res["targets"]] == [True] * 7
    assert "PASS" in proc.stderr or "FAIL" in proc.stderr  # the short table

    written = json.loads(Path(res["results_file"]).read_text())
    assert written["targets"] == res["targets"]
    assert "stop_errors" not in res["teardown"] and "embedded_stop_error" not in res["teardown"]


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
    finally:
        stack.close()
