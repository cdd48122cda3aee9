"""python -m bench: one run, one stack, every figure of issue P7 §1 and the §2 verdicts.

Phases, in this order, against our own embedded PostgreSQL + Redis (temp state dir), with
Redis or (--broker rabbitmq) a private RabbitMQ node as the Celery broker:

  setup     start servers, migrate, `create_api_token bench`, seed stock (receive_stock),
            bulk-insert every draft sale the run needs
  floor     bench.floor_app (bare Celery, stockflow's delivery settings, no stockflow code):
            its own worker; N no-op tasks published in bulk, then drained; stockflow's web
            and worker are not running yet
  obs off   web + worker with observability off (LOG_LEVEL=WARNING, no SENTRY_DSN,
            CELERY_WORKER_SEND_TASK_EVENTS=false); warm-up; e2e
  obs on    restart web + worker with observability on, as shipped (LOG_LEVEL=INFO,
            SENTRY_DSN -> a local sink); warm-up; then, on this same stack:
              e2e          PAID jobs/s closed-loop (the saturation rate), 3-line sales
              job latency  open loop at half the e2e rate: accept -> succeeded p50/p99
              latency      POST .../transition open-loop at --rate while the jobs drain
              statements   log_statement=all for a small sample of PAID jobs, per process
              flash async  --flash-sales sales of one SKU, stock for half, paid concurrently
  sync      a second gunicorn (bench.sync_app) paying in the request: the flash sale again
            (another SKU, same stock), then the same open-loop accept load
  checks    check_ledger, deadlock counters (jobs, worker log, postgres log, pg_stat_database,
            celery_task_retries_total{reason="deadlock"}), oversell, peak memory

Every timed HTTP request goes through harness.loadgen.LeanClient (raw keep-alive sockets);
its CPU per request is measured and reported (target <= 1 ms).

The JSON summary goes to stdout and bench-results/<timestamp>.json; progress and a short
table go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

FLASH_QUANTITY = 2  # units per flash sale; the expired batch holds 1 (see setup)

QUICK = {
    "floor_tasks": 100,
    "e2e_sales": 40,
    "rate": 50.0,
    "latency_seconds": 1.0,
    "flash_sales": 40,
    "job_latency_jobs": 20,
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
        "--flash-sales",
        type=int,
        default=2000,
        help="flash sale: sales of one SKU (quantity 2), sellable stock for half of them",
    )
    p.add_argument(
        "--job-latency-jobs",
        type=int,
        default=400,
        help="PAID jobs fired open-loop at half the e2e rate for accept -> succeeded latency",
    )
    p.add_argument(
        "--loadgen-engine",
        choices=["lean", "httpx"],
        default="lean",
        help="HTTP engine of the timed requests (httpx only to compare its CPU per request)",
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
    p.add_argument(
        "--broker",
        choices=["redis", "rabbitmq"],
        default="redis",
        help="Celery broker: embedded Redis, or a private RabbitMQ node (harness.rabbitmq_node)",
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
        choices=["sync", "flash", "statements", "obs"],
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
    "production starts it: a scope per request and per task, breadcrumbs from warnings, a task failing for good "
    "reported by stockflow, no Celery integration; events to a local sink), CELERY_WORKER_SEND_TASK_EVENTS=true, "
    "CELERY_TASK_SEND_SENT_EVENT=true, "
    "Prometheus metrics (multiprocess files)",
    "on_with_--obs-tracing": "also OTEL_EXPORTER_OTLP_ENDPOINT set (OpenTelemetry Django/Celery/psycopg spans, "
    "OTLP/HTTP to the local sink)",
    "off": "LOG_LEVEL=WARNING, SENTRY_DSN unset (sentry-sdk not initialised), CELERY_WORKER_SEND_TASK_EVENTS=false, "
    "CELERY_TASK_SEND_SENT_EVENT=false, "
    "no OTEL_* variables (tracing not initialised)",
    "not_switchable_by_env": [
        "Prometheus metrics: always recorded; bin/web and bin/worker always set PROMETHEUS_MULTIPROC_DIR "
        "(mmap-file values), so metrics are ON in both modes",
        "django-structlog's request/task middleware still runs (it binds context; only the output is dropped)",
    ],
}


def obs_env(mode: str, sink: SentrySink, tracing: bool = False) -> dict[str, str]:
    if mode == "on":
        env = {
            "LOG_LEVEL": "INFO",
            "SENTRY_DSN": sink.dsn,
            "CELERY_WORKER_SEND_TASK_EVENTS": "true",
            "CELERY_TASK_SEND_SENT_EVENT": "true",
        }
        if tracing:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.base_url
        return env
    return {
        "LOG_LEVEL": "WARNING",
        "CELERY_WORKER_SEND_TASK_EVENTS": "false",
        "CELERY_TASK_SEND_SENT_EVENT": "false",
    }


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
    engine: str = "lean",
):
    """POST path.format(id) for every id: open-loop at `rate`/s, or closed-loop (max rate).
    The generator's own CPU (this thread: the event loop and the sockets' system calls) is
    reported per request; it is not part of any stack figure."""
    from harness.client import async_client
    from harness.loadgen import LeanClient, closed_loop, open_loop

    def client(conns):
        if engine == "httpx":
            return async_client(url, token, max_connections=conns, timeout=timeout)
        return LeanClient(url, token, max_connections=conns, timeout=timeout)

    async def go():
        conns = 2048 if rate else concurrency
        cpu["start"] = time.thread_time()  # from here: requests, connections, parsing
        async with client(conns) as c:

            def request(client, i):
                return (
                    client.post(path.format(ids[i]), json=body)
                    if body is not None
                    else client.post(path.format(ids[i]))
                )

            # Bodies are not read: statuses and times are all the bench needs of an answer.
            if rate:
                return await open_loop(c, request, len(ids), rate, keep_body=False)
            return await closed_loop(c, request, len(ids), concurrency, keep_body=False)

    cpu: dict[str, float] = {}
    samples, gen = asyncio.run(go())
    gen["engine"] = engine
    used = time.thread_time() - cpu["start"]
    gen["cpu_ms_per_request"] = round(1000 * used / max(1, len(ids)), 3)
    return samples, gen


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
            broker=args.broker,
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
        if st.rabbit is not None:  # the floor's publisher (bench.floor_app) reads it
            os.environ["CELERY_BROKER_URL"] = st.broker_url
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
            "job-latency": a.job_latency_jobs,
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
        if "flash" not in a.skip:
            # One SKU per path (async, sync), the same stock: sellable units for half the sales
            # (2 units each) and 1 unit in an expired batch. One unit cannot cover a sale, so
            # the other half fail insufficient_stock (not expired_batch) and it stays untouched.
            for path in ("async", "sync") if "sync" not in a.skip else ("async",):
                sku = f"FLASH-{path.upper()}"
                sizes = db.seed_flash("FLASH", sku, FLASH_QUANTITY * self.flash_stock, 1)
                self.sales[f"flash-{path}"] = db.create_sales(
                    f"flash-{path}", "FLASH", [[sku]] * a.flash_sales, quantity=FLASH_QUANTITY
                )
                stock[sku] = {
                    "sellable_batches": sizes,
                    "expired_batch": 1,
                    "quantity_per_sale": FLASH_QUANTITY,
                    "sales_it_covers": self.flash_stock,
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
    def flash_stock(self) -> int:
        """Sales the flash SKU's sellable stock covers: half of them."""
        return self.args.flash_sales // 2

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
        conns = db.connections()
        wal0, commits0 = db.wal_and_commits()
        cpu0 = self.stack.cpu_snapshot()
        samples, gen = fire(
            self.url,
            self.token,
            "/api/sales/{}/transition",
            ids,
            rate=rate,
            concurrency=self.args.concurrency,
            body={"to_status": "paid"},
            engine=self.args.loadgen_engine,
        )
        accepted = sum(1 for s in samples if s.status == 202)
        conns = _max_counts(conns, db.connections())
        if not db.wait_jobs(ids, accepted, self.args.job_timeout):
            raise RuntimeError(
                f"{name}: jobs not finished after {self.args.job_timeout}s: {db.job_stats(ids)}"
            )
        cpu1 = self.stack.cpu_snapshot()
        time.sleep(1.1)  # the backends flush their commit counts when idle, at most each second
        wal1, commits1 = db.wal_and_commits()
        out = db.job_stats(ids)
        out["cpu_ms_per_job"] = cpu_per(cpu0, cpu1, out["finished"])
        out["pg_connections"] = _max_counts(conns, db.connections())
        if out["finished"]:
            out["wal_bytes_per_job"] = round((wal1 - wal0) / out["finished"])
            # Includes the bench's own polling (a read-only commit per poll, every 0.1 s).
            out["pg_commits_per_job"] = round((commits1 - commits0) / out["finished"], 2)
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
        """The queue's own cost: bench.floor_app's no-op tasks through its own worker, with
        stockflow's delivery settings and none of its code (bench/floor_app.py)."""
        from bench.floor_app import NOOP_TASK, app, delivery_settings, noop

        st, n = self.stack, self.args.floor_tasks
        proc = st.start_floor()
        closing = contextlib.ExitStack()
        try:
            queue = app.conf.task_default_queue
            pending = closing.enter_context(self.broker_pending(queue))
            cpu0 = st.cpu_snapshot()
            t0 = time.perf_counter()
            pub0 = time.thread_time()
            with app.producer_or_acquire() as producer:
                for _ in range(n):
                    noop.apply_async(producer=producer)
            publisher_s = time.thread_time() - pub0
            t_pub = time.perf_counter()
            deadline = time.monotonic() + self.args.job_timeout
            done = 0
            while time.monotonic() < deadline:
                # acks_late: a message leaves the unacked hash after its task ran. It can be
                # between BRPOP and that hash for a moment, so the worker's own count of
                # accepted tasks (one broadcast, at the end) confirms every one was taken.
                while pending() and time.monotonic() < deadline:
                    time.sleep(0.02)
                t_end = time.perf_counter()
                stats = app.control.inspect(destination=[proc.hostname], timeout=2).stats() or {}
                done = stats.get(proc.hostname, {}).get("total", {}).get(NOOP_TASK, 0)
                if done >= n and not pending():
                    break
                time.sleep(0.05)
            if done < n:
                raise RuntimeError(
                    f"floor: {done} of {n} no-op tasks ran in {self.args.job_timeout}s"
                )
            cpu1 = st.cpu_snapshot()
        finally:
            st.stop(proc.name)
            closing.close()
        per = {
            k: round(1000 * (cpu1[k] - cpu0[k]) / n, 3)
            for k in ("floor-worker", "redis", "rabbitmq")
            if k in cpu0 and k in cpu1
        }
        per["publisher"] = round(1000 * publisher_s / n, 3)
        per["stack"] = round(sum(per.values()), 3)
        return {
            "app": "bench.floor_app (bare Celery, no stockflow code or signal handlers)",
            "settings": {k: v for k, v in delivery_settings().items() if k != "broker_url"},
            "worker": f"prefork -c {st.worker_concurrency}, --without-mingle --without-gossip, "
            "loglevel WARNING",
            "task": NOOP_TASK,
            "tasks": n,
            "completed": int(done),
            "publish_s": round(t_pub - t0, 3),
            "cpu_ms_per_task": per,
            "cpu_note": "stack = publisher (this thread, while publishing) + floor worker tree "
            "+ Redis (+ RabbitMQ)",
            "cpu_bound_estimate_tasks_per_s": cpu_bound(per),
            "total_s": round(t_end - t0, 3),
            "tasks_per_s": round(n / (t_end - t0), 1),
            "measured_as": "N / (first publish -> queue and unacked hash empty, confirmed by the "
            "worker's own count of accepted tasks)",
        }

    @contextlib.contextmanager
    def broker_pending(self, queue: str):
        """A callable: messages of `queue` not yet done. Redis: the list plus the unacked
        hash. RabbitMQ: the ready count only (unacked is not in a passive declare; the
        worker's own count of accepted tasks, checked after, covers the last few)."""
        st = self.stack
        if st.rabbit is None:
            import redis

            with redis.Redis.from_url(st.urls["REDIS_URL"]) as r:
                yield lambda: r.llen(queue) or r.hlen("unacked")
            return
        from kombu import Connection

        with Connection(st.broker_url) as conn:
            channel = conn.default_channel
            yield lambda: channel.queue_declare(queue=queue, passive=True).message_count

    def deadlocks_during(self, run, *, worker: bool = True) -> tuple[dict, dict]:
        """run() and the deadlocks it surfaced, from four places."""
        from bench import db

        worker_log = self.stack.procs["worker"].log_path if worker else None
        w_off = worker_log.stat().st_size if worker_log else 0
        pg_off = self.stack.pg_log().stat().st_size
        before = (
            metric_sum(scrape(self.metrics_url), "celery_task_retries_total", reason="deadlock")
            if worker
            else 0
        )
        out = run()
        out["deadlocks"] = {
            "jobs_failed_with_deadlock": out.pop("deadlock_errors", 0),
            "postgres_log_deadlock_detected": db.count_log(
                self.stack.pg_log(), pg_off, "deadlock detected"
            ),
        }
        if worker:
            out["deadlocks"]["worker_log_lines_deadlock_detected"] = db.count_log(
                worker_log, w_off, "deadlock detected"
            )
            out["deadlocks"]["celery_task_retries_total_deadlock"] = int(
                metric_sum(scrape(self.metrics_url), "celery_task_retries_total", reason="deadlock")
                - before
            )
        return out

    def flash_checks(self, path: str, run: dict) -> dict:
        """Outcomes, the expired batch, on-hand and first come, first served of one path."""
        from bench import db

        k = self.flash_stock
        stock = db.flash_outcome(f"FLASH-{path.upper()}", self.sales[f"flash-{path}"], k)
        expired, sellable = stock["batches"][0], stock["batches"][1:]
        want = {"succeeded": k, "failed:insufficient_stock": self.args.flash_sales - k}
        checks = {
            "outcomes_exact": run.get("outcomes") == want,
            "expired_batch_untouched": expired["sold"] == 0
            and expired["on_hand"] == expired["received"],
            "sellable_on_hand_zero": all(b["on_hand"] == 0 for b in sellable),
            "sold_equals_received": sum(b["sold"] for b in sellable)
            == sum(b["received"] for b in sellable),
        }
        return {
            "expected_outcomes": want,
            "stock": stock["batches"],
            "fcfs": {
                "first_accepted": stock["first_accepted"],
                "of_them_succeeded": stock["first_accepted_succeeded"],
            },
            "checks": checks,
            "ok": all(checks.values()),
        }

    def flash(self, path: str, url: str) -> dict:
        ids = self.sales[f"flash-{path}"]
        if path == "async":
            run = self.deadlocks_during(lambda: self.paid_run("flash-async"))
        else:
            run = self.deadlocks_during(lambda: self.sync_run(url, ids), worker=False)
        run.update(self.flash_checks(path, run))
        log(
            f"flash sale ({path}): {run.get('jobs_per_s')} jobs/s, outcomes {run.get('outcomes')}, "
            f"FCFS {run['fcfs']}, checks {'ok' if run['ok'] else run['checks']}"
        )
        return run

    def sync_run(self, url: str, ids: list[int]) -> dict:
        """The sync path, closed-loop: each answer is a finished job."""
        from bench import db
        from harness.loadgen import summarize

        cpu0 = self.stack.cpu_snapshot()
        samples, gen = fire(
            url,
            self.token,
            "/sync/sales/{}/pay",
            ids,
            concurrency=self.args.concurrency,
            engine=self.args.loadgen_engine,
        )
        out = db.job_stats(ids)
        out["cpu_ms_per_job"] = cpu_per(cpu0, self.stack.cpu_snapshot(), out["finished"])
        out["accept"] = summarize(samples) | {"generator": gen}
        return out

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

    def sync_phase(self, res: dict) -> None:
        """A second gunicorn serving bench.sync_app: the flash sale, then the open-loop load."""
        from bench import db
        from harness.loadgen import summarize

        st, a = self.stack, self.args
        url = st.start_web(
            "sync-web",
            dict(obs_env("on", self.sink, a.obs_tracing), **self.web_env),
            app="bench.sync_app:application",
        ).url
        try:
            fire(url, self.token, "/sync/sales/{}/pay", self.sales["sync-warmup"], concurrency=4)
            if "flash-sync" in self.sales:
                res["flash_sale"]["sync"] = self.flash("sync", url)
            ids = self.sales["latency-sync"]
            samples, gen = fire(
                url, self.token, "/sync/sales/{}/pay", ids, rate=a.rate, engine=a.loadgen_engine
            )
            out = summarize(samples, a.rate) | {"generator": gen}
            out["saturated"] = _saturated(out, a.rate)
            out["jobs"] = db.job_stats(ids)
            res["accept_latency"]["sync"] = out
        finally:
            st.stop("sync-web")

    # --- the whole run ------------------------------------------------------------------------------

    def run(self) -> None:
        a, res = self.args, self.result
        self.setup()
        res["floor"] = self.floor()
        log(
            f"floor: {res['floor']['tasks_per_s']} no-op tasks/s, "
            f"{res['floor']['cpu_ms_per_task']['stack']} ms CPU per task"
        )
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
            e2e_on.append(self.paid_run(f"e2e-on-{r}"))
            log(f"e2e (observability on, round {r + 1}): {e2e_on[-1].get('jobs_per_s')} jobs/s")

        floor = res["floor"]
        on = _median([x.get("jobs_per_s") for x in e2e_on])
        est = _median([x.get("cpu_bound_estimate_jobs_per_s") for x in e2e_on])
        cpu_job = e2e_on[len(e2e_on) // 2].get("cpu_ms_per_job") or {}
        res["e2e"] = {
            "jobs_per_s": on,
            "ratio_to_floor": _ratio(on, floor["tasks_per_s"]),
            "cpu_ms_per_job": cpu_job,
            "cpu_ratio_floor_over_e2e": _ratio(
                floor["cpu_ms_per_task"]["stack"], cpu_job.get("stack")
            ),
            "cpu_bound_estimate_jobs_per_s": est,
            "cpu_bound_estimate_ratio_to_floor": _ratio(
                est, floor["cpu_bound_estimate_tasks_per_s"]
            ),
            "sales": a.e2e_sales,
            "lines": a.lines,
            "skus": a.skus,
            "batches_per_sku": 5,
            "observability": "on, as shipped",
            "measured_as": "N / (last job finished_at - first job created_at), transitions fired "
            f"closed-loop with {a.concurrency} in flight; CPU stack = web + worker + PostgreSQL "
            "+ Redis (+ RabbitMQ) (not the load generator); pg_connections: client backends by "
            "application_name, the most seen before, after the accepts and at the end",
            "runs": e2e_on,
        }
        log(
            f"CPU per task / per job: {floor['cpu_ms_per_task']['stack']} / {cpu_job.get('stack')} ms"
            f" = {res['e2e']['cpu_ratio_floor_over_e2e']}"
        )
        if rounds:
            off = _median([x.get("jobs_per_s") for x in e2e_off])
            cpu_on = _median([x.get("cpu_ms_per_job", {}).get("stack") for x in e2e_on])
            cpu_off = _median([x.get("cpu_ms_per_job", {}).get("stack") for x in e2e_off])
            res["observability"] = {
                "e2e_jobs_per_s_on": on,
                "e2e_jobs_per_s_off": off,
                "ratio_on_over_off": _ratio(on, off),
                "rate_cost": round(1 - on / off, 3) if on and off else None,
                "stack_cpu_ms_per_job_on": cpu_on,
                "stack_cpu_ms_per_job_off": cpu_off,
                "cpu_cost": round(cpu_on / cpu_off - 1, 3) if cpu_on and cpu_off else None,
                "definition": OBS_DEFINITION,
                "runs_off": e2e_off,
                "sentry_sink_requests": self.sink.requests,
            }

        if on and "job-latency" in self.sales:
            rate = round(on / 2, 1)
            run = self.paid_run("job-latency", rate=rate)
            res["job_latency"] = {
                "offered_rps": rate,
                "saturation_jobs_per_s": on,
                "accept_to_finished_ms": run.get("accept_to_finish_ms"),
                "measured_as": "jobs_job.finished_at - created_at (the accept's INSERT), open loop "
                "at half the e2e (closed-loop, saturated) rate",
                "run": run,
            }
            log(f"job latency at {rate}/s: {run.get('accept_to_finish_ms')}")

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
        if "flash-async" in self.sales:
            res["flash_sale"] = {
                "sales": a.flash_sales,
                "stock_covers": self.flash_stock,
                "concurrency": a.concurrency,
                "measured_as": "N / (first job created_at -> last finished_at), every sale paid "
                f"closed-loop with {a.concurrency} in flight",
                "async": self.flash("async", self.url),
            }

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
            self.sync_phase(res)
            sync = res["accept_latency"]["sync"]
            res["accept_latency"]["p99_ratio_sync_over_async"] = _ratio(
                sync["latency_ms"]["p99"], res["accept_latency"]["async"]["latency_ms"]["p99"]
            )
            log(f"accept latency (sync path) at {a.rate}/s: {sync['latency_ms']}")
            fl = res.get("flash_sale", {})
            if "sync" in fl:
                fl["ratio_async_over_sync"] = _ratio(
                    fl["async"].get("jobs_per_s"), fl["sync"].get("jobs_per_s")
                )
        res["loadgen"] = self.loadgen_summary(res)
        self.finish()

    def loadgen_summary(self, res: dict) -> dict:
        gens = {}
        for name, part in (
            ("e2e", (res["e2e"]["runs"][0].get("accept") or {})),
            ("accept_latency_async", res["accept_latency"]["async"]),
            ("accept_latency_sync", res["accept_latency"].get("sync") or {}),
            ("flash_async", (res.get("flash_sale", {}).get("async") or {}).get("accept") or {}),
            ("flash_sync", (res.get("flash_sale", {}).get("sync") or {}).get("accept") or {}),
        ):
            if part.get("generator"):
                gens[name] = part["generator"].get("cpu_ms_per_request")
        return {
            "engine": self.args.loadgen_engine,
            "why": "harness.loadgen.LeanClient: asyncio streams, HTTP/1.1 keep-alive, request "
            "bytes formatted, responses read by Content-Length; no extra process or package "
            "(wrk would need apt and a Lua script for per-sale paths), and its CPU is this "
            "thread's, so it is measured exactly (time.thread_time)",
            "cpu_ms_per_request": gens,
            "cpu_ms_per_request_max": max(
                (v for v in gens.values() if v is not None), default=None
            ),
        }

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
            "flash_oversold_units": sum(
                max(0, b["sold"] - b["received"])
                for run in (res.get("flash_sale") or {}).values()
                if isinstance(run, dict) and "stock" in run
                for b in run["stock"]
            ),
        }


def cpu_per(before: dict, after: dict, n: int) -> dict:
    """CPU milliseconds per job of each process tree between two snapshots; `stack` sums
    web, worker, PostgreSQL and Redis (not the bench process, i.e. the load generator)."""
    if not n:
        return {}
    out = {k: round(1000 * (after[k] - before[k]) / n, 2) for k in after if k in before}
    out["stack"] = round(sum(v for k, v in out.items() if k != "bench"), 2)
    return out


def _max_counts(a: dict, b: dict) -> dict:
    return {k: max(a.get(k, 0), b.get(k, 0)) for k in sorted({*a, *b})}


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
    """Issue P7 §2, one row each; `n/a` when the phase was skipped."""
    out = []

    def add(name, wanted, measured, ok):
        verdict = "n/a" if measured is None or ok is None else ("PASS" if ok else "FAIL")
        out.append({"target": name, "wanted": wanted, "measured": measured, "verdict": verdict})

    def at_least(name, value, bound):
        add(name, f">= {bound}", value, None if value is None else value >= bound)

    e2e, lat = res.get("e2e", {}), res.get("accept_latency", {})
    at_least("floor CPU per task / e2e CPU per PAID job", e2e.get("cpu_ratio_floor_over_e2e"), 0.5)
    at_least("e2e jobs/s / floor tasks/s", e2e.get("ratio_to_floor"), 0.5)
    at_least("flash sale jobs/s, async / sync path", res.get("flash_sale", {}).get("ratio_async_over_sync"), 3)  # fmt: skip
    p99 = lat.get("async", {}).get("latency_ms", {}).get("p99")
    add(f"accept p99 at {lat.get('offered_rps')} req/s while draining", "< 10 ms", p99,
        None if p99 is None else p99 < 10)  # fmt: skip
    at_least("accept p99: sync path / async", lat.get("p99_ratio_sync_over_async"), 5)
    jl = (res.get("job_latency") or {}).get("accept_to_finished_ms") or {}
    add("accept -> succeeded p99 at half saturation", "<= 300 ms", jl.get("p99"),
        None if jl.get("p99") is None else jl["p99"] <= 300)  # fmt: skip
    cost = res.get("observability", {}).get("cpu_cost")
    add("observability cost (stack CPU per job, on vs off)", "<= 0.10", cost,
        None if cost is None else cost <= 0.10)  # fmt: skip
    over = res.get("oversell", {})
    n = sum(v or 0 for v in over.values())
    add("oversell == 0 (check_ledger clean)", "0", n if over else None,
        n == 0 and bool(res.get("ledger", {}).get("clean")))  # fmt: skip
    flash = [r for r in (res.get("flash_sale") or {}).values() if isinstance(r, dict) and "deadlocks" in r]  # fmt: skip
    dl = sum(v for r in flash for v in r["deadlocks"].values()) + (
        res.get("postgres", {}).get("deadlocks_run_total") or 0
    )
    add("deadlocks surfaced == 0", "0", dl if flash else None, dl == 0)
    add("flash sale: exact outcomes, expired batch untouched, on-hand 0 (no job lost or twice)",
        "all paths ok", [f"{k}:{'ok' if r['ok'] else 'FAIL'}" for k, r in res.get("flash_sale", {}).items() if isinstance(r, dict) and "ok" in r] or None,
        all(r["ok"] for r in flash) if flash else None)  # fmt: skip
    g = res.get("loadgen", {}).get("cpu_ms_per_request_max")
    add("load generator CPU per request", "<= 1 ms", g, None if g is None else g <= 1)
    return out


def table(res: dict) -> str:
    lat = res.get("accept_latency", {})
    a, s = lat.get("async", {}).get("latency_ms", {}), lat.get("sync", {}).get("latency_ms", {})
    fl, obs = res.get("flash_sale", {}), res.get("observability")
    stm = res.get("statements_per_paid_job", {})
    mem = res.get("resources", {}).get("peak_memory_mb", {})
    floor, e2e = res.get("floor", {}), res.get("e2e", {})
    jl = (res.get("job_latency") or {}).get("accept_to_finished_ms") or {}

    def fmt(*values, sep=" / "):
        return sep.join(str(v) for v in values)

    rows = [
        ("floor no-op tasks/s (bare Celery)", floor.get("tasks_per_s")),
        ("e2e PAID jobs/s (obs on) / ratio", fmt(e2e.get("jobs_per_s"), e2e.get("ratio_to_floor"))),
        ("CPU ms per no-op task / PAID job / ratio",
         fmt((floor.get("cpu_ms_per_task") or {}).get("stack"),
             (e2e.get("cpu_ms_per_job") or {}).get("stack"), e2e.get("cpu_ratio_floor_over_e2e"))),
        ("flash jobs/s async / sync / ratio",
         fmt(fl.get("async", {}).get("jobs_per_s"), fl.get("sync", {}).get("jobs_per_s"),
             fl.get("ratio_async_over_sync")) if fl else None),
        ("flash FCFS: first accepted that succeeded",
         fmt(*(f"{k} {r['fcfs']['of_them_succeeded']}/{r['fcfs']['first_accepted']}"
               for k, r in fl.items() if isinstance(r, dict) and "fcfs" in r)) if fl else None),
        (f"accept p50/p95/p99 ms @{lat.get('offered_rps')}/s", fmt(a.get("p50"), a.get("p95"), a.get("p99"))),
        ("sync path p50/p95/p99 ms", fmt(s.get("p50"), s.get("p95"), s.get("p99")) if s else None),
        (f"job accept->finished p50/p99 ms @{(res.get('job_latency') or {}).get('offered_rps')}/s",
         fmt(jl.get("p50"), jl.get("p99")) if jl else None),
        ("CPU ms/job obs off -> on (cost)",
         f"{obs.get('stack_cpu_ms_per_job_off')} -> {obs.get('stack_cpu_ms_per_job_on')} ({obs.get('cpu_cost')})"
         if obs else None),
        ("statements / PAID job (web + worker)",
         f"{stm.get('per_paid_job')} ({stm.get('accept_path_web', {}).get('per_job')} + "
         f"{stm.get('job_path_worker', {}).get('per_job')})" if stm else None),
        ("load generator CPU ms/request (max)", res.get("loadgen", {}).get("cpu_ms_per_request_max")),
        ("peak PSS MB web / worker", fmt(mem.get("web", {}).get("pss_mb"), mem.get("worker", {}).get("pss_mb"))),
    ]  # fmt: skip
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
                "broker": "embedded Redis"
                if args.broker == "redis"
                else "private RabbitMQ node (quorum queues; Redis for heartbeats)",
                "database": "embedded PostgreSQL 16",
                "settings": "config/settings.py CELERY_* (the floor app reads the same values)",
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
