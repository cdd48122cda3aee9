"""python -m bench: one run, one stack, every figure of issue 5 §1 and the §2 verdicts.

Phases, in this order, against our own embedded PostgreSQL + Redis (temp state dir):

  setup     start servers, migrate, `create_api_token bench`, seed stock (receive_stock),
            bulk-insert every draft sale the run needs
  obs off   web + worker with observability off (LOG_LEVEL=WARNING, no SENTRY_DSN,
            CELERY_WORKER_SEND_TASK_EVENTS=false); warm-up; e2e
  obs on    restart web + worker with observability on (LOG_LEVEL=INFO, SENTRY_DSN -> a local
            sink); warm-up; then, on this same stack:
              floor      N no-op tasks published in bulk, then drained (bench.noop, same pool)
              e2e        PAID jobs/s, 3-line sales over the SKUs, API accept -> job finished
              latency    POST .../transition open-loop at --rate for --latency-seconds
              statements log_statement=all for a small sample of PAID jobs, counted per process
              spread/hot same number of sales over all SKUs / all lines on one SKU
  sync      a second gunicorn (bench.sync_app) paying in the request; same open-loop load
  checks    check_ledger, deadlock counters (jobs, worker log, postgres log, pg_stat_database,
            celery_task_retries_total{reason="deadlock"}), oversell, peak memory

The JSON summary goes to stdout and bench-results/<timestamp>.json; progress and a short
table go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import httpx

from bench.sentry_sink import SentrySink
from bench.stack import ROOT, Stack, log

QUICK = {
    "floor_tasks": 100,
    "e2e_sales": 40,
    "rate": 50.0,
    "latency_seconds": 1.0,
    "hot_sales": 30,
    "statement_sample": 10,
    "warmup": 5,
    "skus": 10,
    "concurrency": 8,
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        "python -m bench",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes for the smoke test (figures meaningless)"
    )
    p.add_argument("--floor-tasks", type=int, default=2000, help="no-op tasks for the floor")
    p.add_argument("--e2e-sales", type=int, default=600, help="PAID jobs per e2e run")
    p.add_argument("--lines", type=int, default=3, help="lines per sale")
    p.add_argument(
        "--skus", type=int, default=50, help="SKUs (5 batches each) the lines are drawn from"
    )
    p.add_argument(
        "--rate", type=float, default=200.0, help="offered req/s for the accept-latency phases"
    )
    p.add_argument(
        "--latency-seconds", type=float, default=5.0, help="duration of each accept-latency phase"
    )
    p.add_argument(
        "--hot-sales", type=int, default=500, help="sales in each of the hot and spread runs"
    )
    p.add_argument(
        "--statement-sample", type=int, default=50, help="PAID jobs run with log_statement=all"
    )
    p.add_argument(
        "--concurrency", type=int, default=16, help="in-flight requests in the max-rate phases"
    )
    p.add_argument(
        "--warmup", type=int, default=30, help="PAID jobs after each (re)start, not measured"
    )
    p.add_argument(
        "--obs-rounds", type=int, default=1, help="(off, on) e2e pairs; the median of each is used"
    )
    p.add_argument(
        "--obs-tracing",
        action="store_true",
        help="observability on includes OpenTelemetry tracing (OTLP/HTTP to a local sink)",
    )
    p.add_argument("--web-concurrency", type=int, default=2)
    p.add_argument("--web-threads", type=int, default=4)
    p.add_argument("--worker-concurrency", type=int, default=2)
    p.add_argument(
        "--web-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for web (lever experiments)",
    )
    p.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the worker (lever experiments)",
    )
    p.add_argument(
        "--worker-nice",
        type=int,
        default=0,
        help="start the worker under `nice -n N` (web keeps CPU priority; lever experiment)",
    )
    p.add_argument(
        "--worker-db-options",
        default="",
        help="libpq options for the worker's connections, e.g. '-c synchronous_commit=off'",
    )
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["sync", "hot", "statements", "obs"],
        help="leave a phase out",
    )
    p.add_argument(
        "--job-timeout", type=float, default=600.0, help="max seconds to wait for a phase's jobs"
    )
    p.add_argument("--results-dir", default=str(ROOT / "bench-results"))
    p.add_argument("--no-results-file", action="store_true")
    p.add_argument("--keep-logs", default=None, help="copy web/worker/postgres logs to this dir")
    p.add_argument("--keep-state", action="store_true", help="leave the temp state dir in place")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            if getattr(args, k) == p.get_default(k):
                setattr(args, k, v)
    return args


def _kv(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


# --- observability modes ------------------------------------------------------------------------

OBS_DEFINITION = {
    "on": "LOG_LEVEL=INFO (JSON lines to the process log files), SENTRY_DSN set (sentry-sdk errors only, as "
    "production starts it: Celery integration, a scope per request, breadcrumbs from warnings; events to a "
    "local sink), CELERY_WORKER_SEND_TASK_EVENTS=true, "
    "Prometheus metrics (multiprocess files)",
    "on_with_--obs-tracing": "also OTEL_EXPORTER_OTLP_ENDPOINT set (OpenTelemetry Django/Celery/psycopg spans, "
    "OTLP/HTTP to the local sink)",
    "off": "LOG_LEVEL=WARNING, SENTRY_DSN unset (sentry-sdk not initialised), CELERY_WORKER_SEND_TASK_EVENTS=false, "
    "no OTEL_* variables (tracing not initialised)",
    "not_switchable_by_env": [
        "Prometheus metrics: always recorded; bin/web and bin/worker always set PROMETHEUS_MULTIPROC_DIR "
        "(mmap-file values), so metrics are ON in both modes",
        "task-sent events from the publisher (web): CELERY_TASK_SEND_SENT_EVENT=True in settings",
        "django-structlog's request/task middleware still runs (it binds context; only the output is dropped)",
    ],
}


def obs_env(mode: str, sink: SentrySink, tracing: bool = False) -> dict[str, str]:
    if mode == "on":
        env = {
            "LOG_LEVEL": "INFO",
            "SENTRY_DSN": sink.dsn,
            "CELERY_WORKER_SEND_TASK_EVENTS": "true",
        }
        if tracing:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.base_url
        return env
    return {"LOG_LEVEL": "WARNING", "CELERY_WORKER_SEND_TASK_EVENTS": "false"}


# --- HTTP firing ------------------------------------------------------------------------------------


def fire(
    url: str,
    token: str,
    path: str,
    ids: list[int],
    *,
    rate: float = 0,
    concurrency: int = 16,
    body: dict | None = None,
    timeout: float = 120.0,
):
    """POST path.format(id) for every id: open-loop at `rate`/s, or closed-loop (max rate)."""
    from harness.client import async_client
    from harness.loadgen import closed_loop, open_loop

    async def go():
        conns = 2048 if rate else concurrency
        async with async_client(url, token, max_connections=conns, timeout=timeout) as c:

            def request(client, i):
                return (
                    client.post(path.format(ids[i]), json=body)
                    if body is not None
                    else client.post(path.format(ids[i]))
                )

            if rate:
                return await open_loop(c, request, len(ids), rate)
            return await closed_loop(c, request, len(ids), concurrency)

    return asyncio.run(go())


# --- worker metrics ------------------------------------------------------------------------------------


def scrape(url: str) -> list[tuple[str, dict, float]]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url, timeout=10).text
    return [
        (s.name, s.labels, s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    ]


def metric_sum(samples, name: str, **labels) -> float:
    return sum(
        v for n, lab, v in samples if n == name and all(lab.get(k) == w for k, w in labels.items())
    )


# --- the run ---------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.stack = Stack(
            web_concurrency=args.web_concurrency,
            web_threads=args.web_threads,
            worker_concurrency=args.worker_concurrency,
            keep_state=args.keep_state,
            worker_nice=args.worker_nice,
        )
        self.sink = SentrySink()
        self.result: dict = {}
        self.token = ""
        self.url = ""
        self.metrics_url = ""
        self.sales: dict[str, list[int]] = {}
        self.web_env = _kv(args.web_env)
        self.worker_env = _kv(args.worker_env)

    # --- setup ------------------------------------------------------------------------------------

    def setup(self) -> None:
        a, st = self.args, self.stack
        log(f"state dir {st.state}: starting our own embedded PostgreSQL and Redis")
        urls = st.start_services()
        if a.worker_db_options:
            from urllib.parse import quote

            sep = "&" if "?" in urls["DATABASE_URL"] else "?"
            self.worker_env["DATABASE_URL"] = (
                urls["DATABASE_URL"] + sep + "options=" + quote(a.worker_db_options)
            )
        t = time.monotonic()
        st.migrate()
        self.token = st.api_token("bench")
        log(f"migrated and token created in {time.monotonic() - t:.1f}s")

        # This process talks to the same database (seeding, polling, counters) as "stockflow-bench".
        os.environ.update(
            {
                k: v
                for k, v in st.base_env.items()
                if k
                in ("DATABASE_URL", "REDIS_URL", "STOCKFLOW_STATE_DIR", "DJANGO_SETTINGS_MODULE")
            }
        )
        os.environ.update(LOG_LEVEL="WARNING", PGAPPNAME="stockflow-bench")
        for k in ("SENTRY_DSN", "PROMETHEUS_MULTIPROC_DIR", "CELERY_BROKER_URL"):
            os.environ.pop(k, None)
        import django

        from stockflow.observability.bootstrap import bootstrap

        bootstrap("manage")  # this process logs like any other stockflow process
        django.setup()
        from bench import db

        self.result["postgres"] = {"extensions_available": db.available_extensions()}
        t = time.monotonic()
        rng = random.Random(a.seed)
        skus = [f"BENCH-{i:03d}" for i in range(a.skus)]
        rounds = 0 if "obs" in a.skip else a.obs_rounds
        sync_count = 0 if "sync" in a.skip else self.latency_count
        plan = {  # name -> sales on the BENCH location
            **{f"warmup-off-{r}": a.warmup for r in range(rounds)},
            **{f"e2e-off-{r}": a.e2e_sales for r in range(rounds)},
            **{f"warmup-on-{r}": a.warmup for r in range(max(1, rounds))},
            **{f"e2e-on-{r}": a.e2e_sales for r in range(max(1, rounds))},
            "latency-async": self.latency_count,
            "statements": 0 if "statements" in a.skip else a.statement_sample,
            "sync-warmup": min(sync_count, max(5, a.warmup // 5)),
            "latency-sync": sync_count,
        }
        demand = sum(plan.values()) * a.lines / a.skus
        # Enough for the whole run, small enough that FEFO walks through several batches.
        per_batch = math.ceil(1.5 * demand / 5) + 10
        db.seed_stock("BENCH", skus, per_batch)
        for name, n in plan.items():
            if n:
                self.sales[name] = db.create_sales(
                    name, "BENCH", db.spread_lines(n, skus, min(a.lines, a.skus), rng)
                )
        stock = {"BENCH": {"skus": a.skus, "batches_per_sku": 5, "per_batch": per_batch}}
        if "hot" not in a.skip:
            spread_skus = [f"SPREAD-{i:03d}" for i in range(a.skus)]
            spread_per_batch = math.ceil(2 * a.hot_sales * a.lines / a.skus / 5) + 10
            db.seed_stock("SPREAD", spread_skus, spread_per_batch)
            # The hot SKU has stock for half the sales: the other half fail insufficient_stock.
            hot_per_batch = math.ceil(a.hot_sales * a.lines / 2 / 5)
            db.seed_stock("HOT", ["HOT-000"], hot_per_batch)
            self.sales["spread"] = db.create_sales(
                "spread",
                "SPREAD",
                db.spread_lines(a.hot_sales, spread_skus, min(a.lines, a.skus), rng),
            )
            self.sales["hot"] = db.create_sales("hot", "HOT", [["HOT-000"] * a.lines] * a.hot_sales)
            stock["SPREAD"] = {"skus": a.skus, "batches_per_sku": 5, "per_batch": spread_per_batch}
            stock["HOT"] = {
                "skus": 1,
                "batches_per_sku": 5,
                "per_batch": hot_per_batch,
                "sales_it_covers": 5 * hot_per_batch // a.lines,
            }
        self.result["setup"] = {
            "stock": stock,
            "draft_sales": {k: len(v) for k, v in self.sales.items()},
            "seconds": round(time.monotonic() - t, 1),
        }
        log(
            f"seeded stock and {sum(map(len, self.sales.values()))} draft sales in {time.monotonic() - t:.1f}s"
        )
        st.memory.start()

    @property
    def latency_count(self) -> int:
        return max(1, round(self.args.rate * self.args.latency_seconds))

    # --- app processes -------------------------------------------------------------------------------

    def start_app(self, mode: str) -> None:
        st = self.stack
        st.stop("web")
        st.stop("worker")
        env = obs_env(mode, self.sink, self.args.obs_tracing)
        t = time.monotonic()
        self.url = st.start_web("web", dict(env, **self.web_env)).url
        self.metrics_url = st.start_worker("worker", dict(env, **self.worker_env)).metrics_url
        st.restarts += 1
        log(f"web + worker up (observability {mode}) in {time.monotonic() - t:.1f}s")

    # --- phases ---------------------------------------------------------------------------------------

    def paid_run(self, name: str, *, rate: float = 0) -> dict:
        """Fire PAID transitions for the sales of `name` and wait for their jobs."""
        from bench import db
        from harness.loadgen import summarize

        ids = self.sales.get(name)
        if not ids:
            return {}
        logs = {k: p.log_path for k, p in self.stack.procs.items() if k in ("web", "worker")}
        lines0 = {k: _count_lines(p) for k, p in logs.items()}
        cpu0 = self.stack.cpu_snapshot()
        samples, gen = fire(
            self.url,
            self.token,
            "/api/sales/{}/transition",
            ids,
            rate=rate,
            concurrency=self.args.concurrency,
            body={"to_status": "paid"},
        )
        accepted = sum(1 for s in samples if s.status == 202)
        if not db.wait_jobs(ids, accepted, self.args.job_timeout):
            raise RuntimeError(
                f"{name}: jobs not finished after {self.args.job_timeout}s: {db.job_stats(ids)}"
            )
        cpu1 = self.stack.cpu_snapshot()
        out = db.job_stats(ids)
        out["cpu_ms_per_job"] = cpu_per(cpu0, cpu1, out["finished"])
        if out["finished"]:
            out["cpu_bound_estimate_jobs_per_s"] = cpu_bound(out["cpu_ms_per_job"])
            out["log_lines_per_job"] = {
                k: round((_count_lines(p) - lines0[k]) / out["finished"], 2)
                for k, p in logs.items()
            }
        out["accept"] = summarize(samples, rate or None) | {"generator": gen}
        if rate:
            out["accept"]["saturated"] = _saturated(out["accept"], rate)
        if accepted != len(ids):
            out["not_accepted"] = len(ids) - accepted
        return out

    def floor(self) -> dict:
        import redis
        from django.conf import settings

        from bench.noop import NOOP_TASK, noop
        from workers.celery import app

        n = self.args.floor_tasks
        r = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        before = metric_sum(scrape(self.metrics_url), "celery_task_outcomes_total", task=NOOP_TASK)
        cpu0 = self.stack.cpu_snapshot()
        t0 = time.perf_counter()
        with app.producer_or_acquire() as producer:
            for _ in range(n):
                noop.apply_async(producer=producer)
        t_pub = time.perf_counter()
        queue = app.conf.task_default_queue
        deadline = time.monotonic() + self.args.job_timeout
        while (r.llen(queue) or r.hlen("unacked")) and time.monotonic() < deadline:
            time.sleep(0.005)
        t_end = time.perf_counter()
        # The queue can look empty while the last message is between BRPOP and the unacked
        # hash: confirm with the worker's own count of finished no-op tasks.
        done = 0.0
        while time.monotonic() < deadline:
            done = (
                metric_sum(scrape(self.metrics_url), "celery_task_outcomes_total", task=NOOP_TASK)
                - before
            )
            if done >= n:
                break
            time.sleep(0.05)
            t_end = time.perf_counter()
        if done < n:
            raise RuntimeError(
                f"floor: only {int(done)} of {n} no-op tasks finished in {self.args.job_timeout}s"
            )
        cpu = cpu_per(cpu0, self.stack.cpu_snapshot(), n)
        return {
            "task": NOOP_TASK,
            "tasks": n,
            "completed": int(done),
            "publish_s": round(t_pub - t0, 3),
            "cpu_ms_per_task": cpu,
            "cpu_bound_estimate_tasks_per_s": cpu_bound(cpu),
            "total_s": round(t_end - t0, 3),
            "tasks_per_s": round(n / (t_end - t0), 1),
            "measured_as": "N / (first publish -> queue and unacked set empty, confirmed by the worker's "
            "celery_task_outcomes_total)",
        }

    def statements(self) -> dict:
        from bench import db

        log_path = self.stack.pg_log()
        offset = log_path.stat().st_size
        db.statement_logging(True)
        try:
            run = self.paid_run("statements")
        finally:
            db.statement_logging(False)
        counts = db.count_statements(log_path, offset)
        jobs = run["finished"] or 1
        per = {}
        for app_name, key in (
            ("stockflow-web", "accept_path_web"),
            ("stockflow-worker", "job_path_worker"),
        ):
            c = counts.get(app_name, {})
            per[key] = {
                "per_job": round(sum(c.values()) / jobs, 2),
                "by_kind_per_job": {k: round(v / jobs, 2) for k, v in sorted(c.items())},
            }
        total = sum(v["per_job"] for v in per.values())
        return {
            "method": "PostgreSQL log_statement=all (ALTER SYSTEM + reload) for a sample of PAID jobs; statement "
            "lines counted per application_name (PGAPPNAME=stockflow-web / stockflow-worker); "
            "pg_stat_statements is not shipped with the embedded server",
            "sample_jobs": run["finished"],
            "outcomes": run["outcomes"],
            "per_paid_job": round(total, 2),
            **per,
        }

    def hot_vs_spread(self) -> dict:
        from django.db import connection

        from bench import db

        out = {}
        worker_log = self.stack.procs["worker"].log_path
        for name in ("spread", "hot"):
            w_off, pg_off = worker_log.stat().st_size, self.stack.pg_log().stat().st_size
            before = metric_sum(
                scrape(self.metrics_url), "celery_task_retries_total", reason="deadlock"
            )
            run = self.paid_run(name)
            run["deadlocks"] = {
                "jobs_failed_with_deadlock": run.pop("deadlock_errors"),
                "worker_log_lines_deadlock_detected": db.count_log(
                    worker_log, w_off, "deadlock detected"
                ),
                "postgres_log_deadlock_detected": db.count_log(
                    self.stack.pg_log(), pg_off, "deadlock detected"
                ),
                "celery_task_retries_total_deadlock": int(
                    metric_sum(
                        scrape(self.metrics_url), "celery_task_retries_total", reason="deadlock"
                    )
                    - before
                ),
            }
            out[name] = run
            log(
                f"{name}: {run.get('jobs_per_s')} jobs/s, outcomes {run['outcomes']}, deadlocks {run['deadlocks']}"
            )
        with connection.cursor() as c:
            c.execute("""
                SELECT COALESCE(SUM(m.quantity) FILTER (WHERE m.kind = 'RECEIPT'), 0),
                       COALESCE(-SUM(m.quantity) FILTER (WHERE m.kind = 'SALE_OUT'), 0)
                FROM inventory_stockmove m JOIN inventory_batch b ON b.id = m.batch_id
                JOIN inventory_location l ON l.id = b.location_id WHERE l.code = 'HOT'""")
            received, sold = c.fetchone()
        hot, spread = out["hot"], out["spread"]
        out["hot_sku_stock"] = {
            "received": received,
            "sold": sold,
            "oversold": max(0, sold - received),
        }
        out["ratio_hot_over_spread"] = _ratio(hot.get("jobs_per_s"), spread.get("jobs_per_s"))
        out["note"] = (
            "hot: every line on one SKU with stock for half the sales (the rest fail insufficient_stock, "
            "which is cheaper than a success); spread: lines over all SKUs, stock plentiful"
        )
        return out

    def sync_latency(self) -> dict:
        from bench import db
        from harness.loadgen import summarize

        st = self.stack
        url = st.start_web(
            "sync-web",
            dict(obs_env("on", self.sink, self.args.obs_tracing), **self.web_env),
            app="bench.sync_app:application",
        ).url
        try:
            fire(url, self.token, "/sync/sales/{}/pay", self.sales["sync-warmup"], concurrency=4)
            ids = self.sales["latency-sync"]
            samples, gen = fire(url, self.token, "/sync/sales/{}/pay", ids, rate=self.args.rate)
            out = summarize(samples, self.args.rate) | {"generator": gen}
            out["saturated"] = _saturated(out, self.args.rate)
            out["jobs"] = db.job_stats(ids)
            return out
        finally:
            st.stop("sync-web")

    # --- the whole run ------------------------------------------------------------------------------

    def run(self) -> None:
        a, res = self.args, self.result
        self.setup()
        e2e_on, e2e_off = [], []
        rounds = 0 if "obs" in a.skip else a.obs_rounds
        for r in range(max(1, rounds)):
            if rounds:
                self.start_app("off")
                self.paid_run(f"warmup-off-{r}")
                e2e_off.append(self.paid_run(f"e2e-off-{r}"))
                log(
                    f"e2e (observability off, round {r + 1}): {e2e_off[-1].get('jobs_per_s')} jobs/s"
                )
            self.start_app("on")
            self.paid_run(f"warmup-on-{r}")
            if r == max(1, rounds) - 1:
                res["floor"] = self.floor()
                log(f"floor: {res['floor']['tasks_per_s']} no-op tasks/s")
            e2e_on.append(self.paid_run(f"e2e-on-{r}"))
            log(f"e2e (observability on, round {r + 1}): {e2e_on[-1].get('jobs_per_s')} jobs/s")

        on = _median([x.get("jobs_per_s") for x in e2e_on])
        est = _median([x.get("cpu_bound_estimate_jobs_per_s") for x in e2e_on])
        res["e2e"] = {
            "jobs_per_s": on,
            "ratio_to_floor": _ratio(on, res["floor"]["tasks_per_s"]),
            "cpu_bound_estimate_jobs_per_s": est,
            "cpu_bound_estimate_ratio_to_floor": _ratio(
                est, res["floor"]["cpu_bound_estimate_tasks_per_s"]
            ),
            "cpu_ms_per_job": e2e_on[len(e2e_on) // 2].get("cpu_ms_per_job"),
            "sales": a.e2e_sales,
            "lines": a.lines,
            "skus": a.skus,
            "batches_per_sku": 5,
            "measured_as": "N / (last job finished_at - first job created_at), transitions fired "
            f"closed-loop with {a.concurrency} in flight",
            "runs": e2e_on,
        }
        if rounds:
            off = _median([x.get("jobs_per_s") for x in e2e_off])
            cpu_on = _median([x.get("cpu_ms_per_job", {}).get("stack") for x in e2e_on])
            cpu_off = _median([x.get("cpu_ms_per_job", {}).get("stack") for x in e2e_off])
            res["observability"] = {
                "e2e_jobs_per_s_on": on,
                "e2e_jobs_per_s_off": off,
                "ratio_on_over_off": _ratio(on, off),
                "cost": round(1 - on / off, 3) if on and off else None,
                "stack_cpu_ms_per_job_on": cpu_on,
                "stack_cpu_ms_per_job_off": cpu_off,
                "cpu_cost": round(cpu_on / cpu_off - 1, 3) if cpu_on and cpu_off else None,
                "definition": OBS_DEFINITION,
                "runs_off": e2e_off,
                "sentry_sink_requests": self.sink.requests,
            }

        lat = self.paid_run("latency-async", rate=a.rate)
        res["accept_latency"] = {
            "offered_rps": a.rate,
            "seconds": a.latency_seconds,
            "latency_from": "scheduled send time (open-loop; includes client lag)",
            "async": {**lat.pop("accept"), "jobs": lat},
        }
        log(f"accept latency (async) at {a.rate}/s: {res['accept_latency']['async']['latency_ms']}")

        if "statements" not in a.skip:
            res["statements_per_paid_job"] = self.statements()
            log(f"statements per PAID job: {res['statements_per_paid_job']['per_paid_job']}")
        if "hot" not in a.skip:
            res["hot_sku"] = self.hot_vs_spread()

        metrics = scrape(self.metrics_url)
        res["worker_metrics"] = {
            "task_retries_by_reason": {
                lab["reason"]: v for n, lab, v in metrics if n == "celery_task_retries_total" and v
            },
            "task_outcomes": {
                f"{lab['task']}:{lab['outcome']}": v
                for n, lab, v in metrics
                if n == "celery_task_outcomes_total" and v
            },
        }
        if "sync" not in a.skip:
            sync = self.sync_latency()
            res["accept_latency"]["sync"] = sync
            res["accept_latency"]["p99_ratio_sync_over_async"] = _ratio(
                sync["latency_ms"]["p99"], res["accept_latency"]["async"]["latency_ms"]["p99"]
            )
            log(f"accept latency (sync path) at {a.rate}/s: {sync['latency_ms']}")
        self.finish()

    def finish(self) -> None:
        from bench import db

        res, st = self.result, self.stack
        peaks = dict(st.memory.peak)
        for name in list(st.procs):
            st.stop(name)
        res["resources"] = {
            "peak_memory_mb": peaks,
            "memory_note": "process trees (main + children), sampled every 0.5 s; RSS sums count "
            "shared (forked) pages per process, PSS splits them",
        }
        # Backends flush their statistics when they exit: read after the app processes stopped.
        res["postgres"]["pg_stat_database_run_total"] = db.pg_stat_database()
        res["postgres"]["deadlocks_run_total"] = res["postgres"]["pg_stat_database_run_total"][
            "deadlocks"
        ]
        ledger = st.manage("check_ledger", "--json")
        try:
            report = json.loads(ledger.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            report = {"clean": False, "error": (ledger.stdout + ledger.stderr)[-1000:]}
        res["ledger"] = report
        v = report.get("violations", {})
        res["oversell"] = {
            "on_hand_not_negative": len(v.get("on_hand_not_negative", [])),
            "on_hand_equals_moves": len(v.get("on_hand_equals_moves", [])),
            "hot_sku_oversold_units": (res.get("hot_sku") or {})
            .get("hot_sku_stock", {})
            .get("oversold"),
        }


def cpu_per(before: dict, after: dict, n: int) -> dict:
    """CPU milliseconds per job of each process tree between two snapshots; `stack` sums
    web, worker, PostgreSQL and Redis (not the bench process, i.e. the load generator)."""
    if not n:
        return {}
    out = {k: round(1000 * (after[k] - before[k]) / n, 2) for k in after if k in before}
    out["stack"] = round(sum(v for k, v in out.items() if k != "bench"), 2)
    return out


def cpu_bound(cpu_ms: dict) -> float | None:
    """Jobs/s this machine's cores could sustain if CPU were the only limit and the stack
    had every core to itself (no load generator, no neighbours): cores x 1000 / stack
    CPU ms per job. An estimate, robust to a noisy machine; not a measurement."""
    per_job = cpu_ms.get("stack")
    return round((os.cpu_count() or 1) * 1000 / per_job, 1) if per_job else None


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return 0


def _saturated(summary: dict, rate: float) -> bool:
    """The server answered markedly slower than the offered rate: requests queued up for
    the whole phase, so the latency figures measure the queue, not the service."""
    achieved = summary.get("achieved_rps") or 0
    return achieved < 0.9 * rate


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


def _median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else round((values[mid - 1] + values[mid]) / 2, 1)


# --- verdicts and output ---------------------------------------------------------------------------------


def targets(res: dict) -> list[dict]:
    out = []

    def add(name, target, measured, ok):
        out.append(
            {
                "target": name,
                "wanted": target,
                "measured": measured,
                "verdict": "n/a" if ok is None else ("PASS" if ok else "FAIL"),
            }
        )

    e2e = res.get("e2e", {})
    add(
        "e2e >= 0.5 x floor",
        ">= 0.5",
        e2e.get("ratio_to_floor"),
        None if e2e.get("ratio_to_floor") is None else e2e["ratio_to_floor"] >= 0.5,
    )
    lat = res.get("accept_latency", {})
    p99 = lat.get("async", {}).get("latency_ms", {}).get("p99")
    add(
        f"accept p99 < 10 ms at {lat.get('offered_rps')} req/s",
        "< 10 ms",
        p99,
        None if p99 is None else p99 < 10,
    )
    r = lat.get("p99_ratio_sync_over_async")
    add("accept p99 >= 5x better than sync path", ">= 5", r, None if r is None else r >= 5)
    hot = res.get("hot_sku", {})
    r = hot.get("ratio_hot_over_spread")
    add("hot SKU >= 0.5 x spread", ">= 0.5", r, None if r is None else r >= 0.5)
    if hot:
        dl = sum(v for run in ("hot", "spread") for v in hot[run]["deadlocks"].values())
        dl += res.get("postgres", {}).get("deadlocks_run_total") or 0
        add("deadlocks surfaced == 0", "0", dl, dl == 0)
    over = res.get("oversell", {})
    n = (
        (over.get("on_hand_not_negative") or 0)
        + (over.get("on_hand_equals_moves") or 0)
        + (over.get("hot_sku_oversold_units") or 0)
    )
    add(
        "oversell == 0 (check_ledger clean)",
        "0",
        n,
        n == 0 and bool(res.get("ledger", {}).get("clean")),
    )
    cost = res.get("observability", {}).get("cost")
    add("observability cost <= 10 %", "<= 0.10", cost, None if cost is None else cost <= 0.10)
    return out


def table(res: dict) -> str:
    lat = res.get("accept_latency", {})
    a, s = lat.get("async", {}).get("latency_ms", {}), lat.get("sync", {}).get("latency_ms", {})
    hot = res.get("hot_sku", {})
    stm = res.get("statements_per_paid_job", {})
    mem = res.get("resources", {}).get("peak_memory_mb", {})
    rows = [
        ("floor (no-op tasks/s)", res.get("floor", {}).get("tasks_per_s")),
        ("e2e PAID jobs/s (obs on)", res.get("e2e", {}).get("jobs_per_s")),
        ("e2e / floor", res.get("e2e", {}).get("ratio_to_floor")),
        (
            "CPU ms per no-op task / PAID job (stack)",
            f"{(res.get('floor', {}).get('cpu_ms_per_task') or {}).get('stack')} / "
            f"{(res.get('e2e', {}).get('cpu_ms_per_job') or {}).get('stack')}",
        ),
        (
            "CPU-bound estimate: floor / e2e / ratio",
            f"{res.get('floor', {}).get('cpu_bound_estimate_tasks_per_s')} / "
            f"{res.get('e2e', {}).get('cpu_bound_estimate_jobs_per_s')} / "
            f"{res.get('e2e', {}).get('cpu_bound_estimate_ratio_to_floor')}",
        ),
        (
            f"accept p50/p95/p99 ms @{lat.get('offered_rps')}/s",
            f"{a.get('p50')} / {a.get('p95')} / {a.get('p99')}",
        ),
        (
            "sync path p50/p95/p99 ms",
            f"{s.get('p50')} / {s.get('p95')} / {s.get('p99')}" if s else None,
        ),
        ("sync p99 / async p99", lat.get("p99_ratio_sync_over_async")),
        (
            "hot / spread jobs/s",
            f"{hot.get('hot', {}).get('jobs_per_s')} / {hot.get('spread', {}).get('jobs_per_s')}"
            f" = {hot.get('ratio_hot_over_spread')}"
            if hot
            else None,
        ),
        (
            "e2e jobs/s obs off -> on (cost)",
            f"{res.get('observability', {}).get('e2e_jobs_per_s_off')} -> "
            f"{res.get('observability', {}).get('e2e_jobs_per_s_on')} ({res.get('observability', {}).get('cost')})"
            if res.get("observability")
            else None,
        ),
        (
            "CPU ms/job obs off -> on (cost)",
            f"{res.get('observability', {}).get('stack_cpu_ms_per_job_off')} -> "
            f"{res.get('observability', {}).get('stack_cpu_ms_per_job_on')} ({res.get('observability', {}).get('cpu_cost')})"
            if res.get("observability")
            else None,
        ),
        (
            "statements / PAID job (web + worker)",
            f"{stm.get('per_paid_job')} ({stm.get('accept_path_web', {}).get('per_job')} + "
            f"{stm.get('job_path_worker', {}).get('per_job')})"
            if stm
            else None,
        ),
        (
            "peak PSS MB web / worker",
            f"{mem.get('web', {}).get('pss_mb')} / {mem.get('worker', {}).get('pss_mb')}",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows if v is not None]
    lines.append("")
    for t in res.get("targets", []):
        lines.append(
            f"{t['verdict']:4}  {t['target']}  (measured {t['measured']}, wanted {t['wanted']})"
        )
    return "\n".join(lines)


def _git() -> dict:
    def git(*args):
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--", "api", "tasks", "workers", "bin")),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    # SIGTERM tears down like Ctrl-C does: our processes and servers are stopped, not leaked.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.time()
    bench = Bench(args)
    res = bench.result
    res.update(
        {
            "bench": "stockflow",
            "format": 1,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "git": _git(),
            "machine": {
                "cpus": os.cpu_count(),
                "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
                "python": platform.python_version(),
            },
            "config": {
                k: v
                for k, v in vars(args).items()
                if k not in ("results_dir", "keep_logs", "keep_state", "no_results_file")
            }
            | {
                "pool": "prefork",
                "broker": "embedded Redis",
                "database": "embedded PostgreSQL 16",
                "acks_late": True,
                "prefetch_multiplier": 1,
            },
        }
    )
    status = 0
    try:
        bench.run()
    except BaseException as exc:
        res["error"] = f"{type(exc).__name__}: {exc}"[-4000:]
        traceback.print_exc(file=sys.stderr)
        status = 1
    finally:
        keep = Path(args.keep_logs) if args.keep_logs else None
        if status and keep is None:
            keep = (
                Path(args.results_dir)
                / f"logs-{time.strftime('%Y%m%dT%H%M%S', time.localtime(started))}"
            )
        try:
            res["teardown"] = bench.stack.close(keep_logs=keep)
        finally:
            bench.sink.close()
    res["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    res["duration_s"] = round(time.time() - started, 1)
    res["targets"] = targets(res)
    res["caveat"] = (
        "figures from a shared 2-core machine: other work running at the same time shows up in "
        "them (see machine.loadavg_*); compare runs made on a quiet machine"
    )
    if not args.no_results_file:
        out_dir = Path(args.results_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{time.strftime('%Y%m%dT%H%M%S', time.localtime(started))}.json"
        path.write_text(json.dumps(res, indent=2, default=str) + "\n")
        res["results_file"] = str(path)
    print(json.dumps(res, indent=2, default=str), flush=True)
    print(
        "\n"
        + table(res)
        + (f"\n\nresults: {res['results_file']}" if "results_file" in res else ""),
        file=sys.stderr,
        flush=True,
    )
    return status
