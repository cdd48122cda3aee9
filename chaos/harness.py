"""The chaos run: stack up, load and faults at once, drain, verdict, teardown."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

from workers.rabbitmq import DEAD_LETTER

from . import checks
from .stack import Stack, log
from .workload import Api, Recorder, Workload, as_table, dumps


class Chaos(threading.Thread):
    """Faults while the load runs: kill -9 of worker processes (a pool child, the main
    process alone, or the whole process group) with restarts, a broker kill -9 + restart
    (Redis: its data gone; RabbitMQ: the node's whole process group, its quorum queues
    back from disk), PostgreSQL postmaster signal + restart. The broker/PostgreSQL
    restarts are spread over the load's progress so they land while requests and jobs
    are in flight; whatever is still due when the load ends is done then."""

    KILL_KINDS = ("child", "main", "group")

    def __init__(self, stack: Stack, rec: Recorder, progress, args, fatal: threading.Event):
        super().__init__(name="chaos", daemon=True)
        self.stack, self.rec, self.progress, self.args, self.fatal = (
            stack,
            rec,
            progress,
            args,
            fatal,
        )
        self.load_done = threading.Event()
        self.rng = random.Random(args.seed + 1)
        kinds = sorted(
            [((j + 0.5) / args.broker_restarts, "broker") for j in range(args.broker_restarts)]
            + [((j + 0.5) / args.pg_restarts, "postgres") for j in range(args.pg_restarts)]
        )
        n = len(kinds)
        self.events = [((i + 1) / (n + 1), kind) for i, (_, kind) in enumerate(kinds)]
        self.pg_signals = [signal.SIGKILL, signal.SIGINT, signal.SIGQUIT]
        self.kills: Counter = Counter()
        self.kill_log: list[dict] = []
        self.worker_restarts = 0
        self.kills_deferred = 0  # no worker was ready when one was due
        self.broker_restarts: list[dict] = []
        self.pg_restarts: list[dict] = []
        self.unexpected_exits: list[dict] = []
        self.errors: list[str] = []
        self.expected_dead: set[int] = set()  # pids we killed on purpose
        self.crash_seen: dict[int, float] = {}

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            self.rec.violation("chaos_action_failed", error=f"{type(exc).__name__}: {exc}"[:600])
            self.fatal.set()

    def _run(self) -> None:
        next_kill = time.monotonic() + self._kill_gap()
        while not self.load_done.is_set() and not self.fatal.is_set():
            self.watch()
            if self.events and self.progress() >= self.events[0][0]:
                self.do_event(self.events.pop(0)[1])
            elif time.monotonic() >= next_kill:
                self.kill_worker()
                next_kill = time.monotonic() + self._kill_gap()
            time.sleep(0.2)
        # The load is over: whatever is still due happens now (the jobs are still draining).
        while self.events and not self.fatal.is_set():
            self.do_event(self.events.pop(0)[1])
        while sum(self.kills.values()) < self.args.min_worker_kills and not self.fatal.is_set():
            self.kill_worker()
            time.sleep(self._kill_gap() / 2)
        self.heal()

    def _kill_gap(self) -> float:
        return self.args.kill_interval * self.rng.uniform(0.6, 1.4)

    def watch(self) -> None:
        """An app process that exited without being killed by us is a finding: record it
        (with its log tail) and start it again so the run can go on. One that logged a
        fatal error but hangs on is given 20 s to exit, then killed and counted the same."""
        for p in self.stack.processes():
            if p.alive() and p.crashed():
                since = self.crash_seen.setdefault(p.pid, time.monotonic())
                if time.monotonic() - since > 20:
                    p.kill9_group()
            if p.popen is not None and not p.alive() and p.pid not in self.expected_dead:
                exit_info = {
                    "process": p.name,
                    "pid": p.pid,
                    "returncode": p.returncode(),
                    "t": round(time.monotonic() - self.args.t0, 1),
                    "cause": exit_cause(p.tail(400)),
                }
                self.unexpected_exits.append(exit_info)
                self.rec.finding("process_exited_unexpectedly", **exit_info)
                log(
                    f"{p.name} (pid {p.pid}) exited by itself with {p.returncode()} ({exit_info['cause']}): "
                    "restarting it"
                )
                p.start()
                if p in self.stack.workers:
                    self.worker_restarts += 1

    def kill_worker(self) -> None:
        n = sum(self.kills.values())
        kind = (
            self.KILL_KINDS[n]
            if n < len(self.KILL_KINDS)
            else self.rng.choice(("child", "child", "main", "group"))
        )
        self.watch()
        # A worker that logged a fatal error is dying by itself: leave it to watch(). One
        # not ready yet holds no message: on a loaded host, where a boot takes longer than
        # the kill interval, killing it again would keep every worker down and measure the
        # host, not the recovery.
        alive = [w for w in self.stack.workers if w.alive() and not w.crashed() and w.ready()]
        if not alive:
            self.kills_deferred += 1
            return
        w = self.rng.choice(alive)
        if kind == "child":
            # Not within a worker's first seconds: Celery exits by design ("Could not start
            # worker processes") when a pool child dies before the pool is up.
            settled = [
                v for v in alive if time.monotonic() - v.started_at > self.args.child_kill_grace
            ]
            pairs = [(v, c) for v in settled for c in v.children()]
            if not pairs:
                kind = "main"
            else:
                w, pid = self.rng.choice(pairs)
                try:
                    os.kill(pid, signal.SIGKILL)  # the main process forks a new child itself
                except ProcessLookupError:
                    return
                self.kills["child"] += 1
                self.kill_log.append(
                    {
                        "t": round(time.monotonic() - self.args.t0, 1),
                        "kind": "child",
                        "worker": w.name,
                        "pid": pid,
                    }
                )
                log(f"kill -9 pool child {pid} of {w.name}")
                return
        pid = w.pid
        self.expected_dead.add(pid)
        if kind == "main":
            w.kill9()
        else:
            w.kill9_group()
        self.kills[kind] += 1
        self.kill_log.append(
            {
                "t": round(time.monotonic() - self.args.t0, 1),
                "kind": kind,
                "worker": w.name,
                "pid": pid,
            }
        )
        down = self.rng.uniform(0.5, 2.0)
        log(
            f"kill -9 {'main process' if kind == 'main' else 'process group'} {pid} of {w.name}; "
            f"restart in {down:.1f}s"
        )
        time.sleep(down)
        w.start()
        self.worker_restarts += 1

    def do_event(self, kind: str) -> None:
        if kind == "broker":
            log(f"kill -9 the broker ({self.args.broker})")
            info = self.stack.restart_broker(self.args.broker_down)
            info["t"] = round(time.monotonic() - self.args.t0, 1)
            info["at_progress"] = round(self.progress(), 3)
            self.broker_restarts.append(info)
            log(f"{self.args.broker} back: {info}")
        else:
            sig = self.pg_signals[len(self.pg_restarts) % len(self.pg_signals)]
            log(f"PostgreSQL postmaster <- {sig.name}")
            info = self.stack.restart_postgres(sig, self.args.pg_down)
            info["t"] = round(time.monotonic() - self.args.t0, 1)
            info["at_progress"] = round(self.progress(), 3)
            self.pg_restarts.append(info)
            log(f"PostgreSQL back: {info}")

    def heal(self) -> None:
        self.watch()
        for w in self.stack.workers:
            if not w.alive():
                w.start()
                self.worker_restarts += 1

    def summary(self) -> dict:
        return {
            "worker_kills": dict(self.kills),
            "worker_kills_total": sum(self.kills.values()),
            "worker_restarts": self.worker_restarts,
            "worker_kills_deferred": self.kills_deferred,
            "broker": self.args.broker,
            "broker_restarts": self.broker_restarts,
            "postgres_restarts": self.pg_restarts,
            "unexpected_exits": self.unexpected_exits,
            "errors": self.errors,
            "kill_log": self.kill_log[:50],
        }


def exit_cause(log_text: str) -> str:
    """The last fatal-looking event of a process's JSON log (e.g. Celery's
    "Unrecoverable error: ..."), else its last line."""
    lines = log_text.splitlines()
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    for levels in (("critical", "fatal"), ("error",)):
        for event in reversed(events):
            if event.get("level") in levels:
                return str(event.get("event"))[:300]
    return lines[-1][:300] if lines else ""


def wait_http(url: str, timeout: float, want=(200,)) -> httpx.Response | None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, timeout=5)
            if last.status_code in want:
                return last
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    return last


def drain(stack: Stack, rec: Recorder, timeout: float) -> dict:
    """Wait until no job is queued or running (all terminal), or the timeout."""
    t0 = time.monotonic()
    last_log = 0.0
    counts: dict = {}
    while time.monotonic() - t0 < timeout:
        try:
            counts = checks.job_status_counts(stack.urls["DATABASE_URL"])
        except Exception as exc:  # the database should be up by now; keep trying
            counts = {"error": str(exc)[:100]}
        pending = counts.get("queued", 0) + counts.get("running", 0)
        if "error" not in counts and pending == 0:
            return {
                "seconds": round(time.monotonic() - t0, 1),
                "quiescent": True,
                "job_status": counts,
            }
        if time.monotonic() - last_log > 10:
            log(f"draining: {counts}")
            last_log = time.monotonic()
        for p in stack.processes():  # nothing may die while we wait either
            if p.popen is not None and not p.alive():
                rec.finding(
                    "process_exited_unexpectedly",
                    process=p.name,
                    pid=p.pid,
                    returncode=p.returncode(),
                    phase="drain",
                    cause=exit_cause(p.tail(400)),
                )
                p.start()
        time.sleep(1)
    return {"seconds": round(time.monotonic() - t0, 1), "quiescent": False, "job_status": counts}


def probe(stack: Stack, api: Api, rec: Recorder, lease: int, n: int = 4) -> dict:
    """After the faults: /readyz is green again, and fresh payments go through quickly,
    without waiting for the reconciler (i.e. web publishes to the new Redis and the
    workers consume from it: everybody reconnected by themselves)."""
    base = f"http://127.0.0.1:{stack.port}"
    ready = wait_http(f"{base}/readyz", 60)
    out = {
        "readyz": ready.status_code if ready is not None else None,
        "readyz_body": ready.json() if ready is not None else None,
        "payments": [],
    }
    if ready is None or ready.status_code != 200:
        rec.violation(
            "not_ready_after_chaos", body=ready.text[:300] if ready is not None else "no answer"
        )
    sku = f"PROBE-{uuid.uuid4().hex[:8]}"
    api.call("probe", "POST", "/api/products", json_body={"sku": sku, "name": "probe"})
    api.call(
        "probe",
        "POST",
        "/api/receipts",
        json_body={
            "sku": sku,
            "location": "MAIN",
            "lot": "P1",
            "quantity": 100,
            "expires_on": None,
        },
    )
    for i in range(n):
        resp, _ = api.call(
            "probe",
            "POST",
            "/api/sales",
            json_body={
                "number": f"{sku}-{i}",
                "location": "MAIN",
                "lines": [{"sku": sku, "quantity": 1, "unit_price": "1.00"}],
            },
        )
        if resp is None or resp.status_code != 201:
            rec.violation(
                "probe_failed", step="sale", status=resp.status_code if resp is not None else None
            )
            continue
        sale_id = resp.json()["id"]
        t0 = time.monotonic()
        resp, _ = api.call(
            "probe",
            "POST",
            f"/api/sales/{sale_id}/transition",
            json_body={"to_status": "paid"},
            headers={"Idempotency-Key": f"probe-{i}"},
        )
        if resp is None or resp.status_code != 202:
            rec.violation(
                "probe_failed", step="pay", status=resp.status_code if resp is not None else None
            )
            continue
        job_id = resp.json()["job"]["id"]
        rec.accept("pay", sale_id, f"probe-{i}", job_id)
        job = None
        while time.monotonic() - t0 < max(30, 3 * lease):
            r, _ = api.call("probe", "GET", f"/api/jobs/{job_id}")
            job = r.json() if r is not None and r.status_code == 200 else None
            if job and job["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.1)
        took = round(time.monotonic() - t0, 2)
        out["payments"].append(
            {"status": job and job["status"], "seconds": took, "attempts": job and job["attempts"]}
        )
        if not job or job["status"] != "succeeded":
            rec.violation("probe_failed", step="job", job=job)
        elif took >= lease:
            # Done, but only once the reconciler re-sent it: the first publish was lost.
            rec.finding("probe_needed_reconciler", seconds=took, lease=lease)
    return out


def log_stats(stack: Stack, rec: Recorder) -> dict:
    """From the processes' JSON logs: deliveries, retries by reason, reconciler re-sends,
    and fatal events (a worker can die by itself just before we kill it: the log tells)."""
    received = resent = lost_acks = 0
    retries: Counter = Counter()
    fatal: list[dict] = []
    for path in sorted(stack.logs.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            text = str(event.get("event", ""))
            if text.startswith("Task stockflow.run_job[") and text.endswith("received"):
                received += 1
            elif text == "jobs.reconciled":
                resent += int(event.get("resent") or 0)
            elif text == "task_retrying":
                m = re.search(r"TransientError\('(\w+)", str(event.get("reason", "")))
                retries[m.group(1) if m else "other"] += 1
            if event.get("level") in ("critical", "fatal"):
                if text.startswith(("Couldn't ack", "Couldn't reject")):
                    lost_acks += 1  # the channel died with Redis: expected, the job row decides
                else:
                    fatal.append(
                        {"log": path.name, "timestamp": event.get("timestamp"), "event": text[:200]}
                    )
    for f in fatal:
        rec.finding("fatal_log_event", **f)
    return {
        "run_job_deliveries_received": received,
        "reconciler_resent": resent,
        "task_retries_by_reason": dict(retries),
        "fatal_events": len(fatal),
        "acks_lost_with_broker": lost_acks,
    }


def accounting(rec: Recorder, load: Workload, args) -> dict:
    """Outcomes against requests: one sale per sale flow, one pay job per sale, one job
    per distinct idempotency key, the refunds asked for."""
    pay_keys = sum(
        1 for (kind, _, key) in rec.accepted if kind == "pay" and not key.startswith("probe-")
    )
    refund_keys = sum(1 for (kind, _, _) in rec.accepted if kind == "refund")
    over = sum(
        n for (kind, status), n in rec.requests.items() if kind == "refund_over" and status == 422
    )
    out = {
        "sales_planned": args.sales,
        "sales_created": rec.notes["sales_created"],
        "pay_jobs_accepted": pay_keys,
        "refunds_planned": args.refunds,
        "refund_keys_sent": load.refund_keys_sent,
        "refund_jobs_accepted": refund_keys,
        "over_refunds_refused": over,
    }
    if not (args.sales == out["sales_created"] == pay_keys):
        rec.violation("sales_vs_pay_jobs", **out)
    if refund_keys + over != load.refund_keys_sent:
        rec.violation("refund_keys_vs_outcomes", **out)
    if load.refund_keys_sent < args.refunds:
        rec.finding("refunds_short", reason="not enough paid sales to refund", **out)
    return out


def request_mix(requests: Counter) -> dict:
    """What share of the client's requests were duplicates, over-refunds, malformed."""
    by_kind = Counter()
    for (kind, _), n in requests.items():
        by_kind[kind] += n
    work = (
        "sale_create",
        "pay",
        "pay_duplicate",
        "refund",
        "refund_duplicate",
        "refund_over",
        "refund_conflict",
        "malformed",
    )
    total = sum(by_kind[k] for k in work)
    jobs_requests = sum(by_kind[k] for k in ("pay", "pay_duplicate", "refund", "refund_duplicate"))
    refunds = by_kind["refund"] + by_kind["refund_over"]
    pct = lambda a, b: round(100 * a / b, 1) if b else 0.0  # noqa: E731
    return {
        "requests": total,
        "duplicate_pct_of_job_requests": pct(
            by_kind["pay_duplicate"] + by_kind["refund_duplicate"], jobs_requests
        ),
        "over_refund_pct_of_refunds": pct(by_kind["refund_over"], refunds),
        "malformed_pct_of_requests": pct(by_kind["malformed"], total),
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        "python -m chaos",
        description=sys.modules["chaos"].__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sales", type=int, default=10000)
    p.add_argument("--refunds", type=int, default=2000)
    p.add_argument("--threads", type=int, default=6, help="client threads for sale flows")
    p.add_argument("--refund-threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--worker-concurrency", type=int, default=2)
    p.add_argument("--web-concurrency", type=int, default=2)
    p.add_argument(
        "--broker",
        choices=["redis", "rabbitmq"],
        default="redis",
        help="Celery broker: embedded Redis, or a private RabbitMQ node (harness.rabbitmq_node)",
    )
    p.add_argument("--broker-restarts", "--redis-restarts", type=int, default=2)
    p.add_argument("--pg-restarts", type=int, default=1)
    p.add_argument(
        "--broker-down",
        "--redis-down",
        type=float,
        default=None,
        help="seconds the broker stays down (default: Redis 1, RabbitMQ 3)",
    )
    p.add_argument("--pg-down", type=float, default=2.0, help="seconds PostgreSQL stays down")
    p.add_argument(
        "--kill-interval", type=float, default=4.0, help="mean seconds between worker kills"
    )
    p.add_argument("--min-worker-kills", type=int, default=3)
    p.add_argument(
        "--child-kill-grace",
        type=float,
        default=8.0,
        help="no pool-child kills within this many seconds of a worker's start",
    )
    p.add_argument("--queued-lease", type=int, default=5, help="JOB_QUEUED_LEASE_SECONDS")
    p.add_argument("--running-lease", type=int, default=10, help="JOB_RUNNING_LEASE_SECONDS")
    p.add_argument(
        "--reconcile-interval", type=int, default=2, help="JOB_RECONCILE_INTERVAL_SECONDS"
    )
    p.add_argument("--dup-rate", type=float, default=0.10)
    p.add_argument("--over-refund-rate", type=float, default=0.05)
    p.add_argument("--malformed-rate", type=float, default=0.05)
    p.add_argument(
        "--drain-timeout", type=float, default=None, help="default: 120 s + 0.1 s per request"
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="time budget: the load stops at 60 %% of it (a violation), the drain gets the rest",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--allow-error-jobs",
        action="store_true",
        help="do not count jobs failed with code `error` (retries exhausted) as violations",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="findings (processes that died by themselves, lost publishes) count as violations",
    )
    p.add_argument(
        "--keep-logs", metavar="DIR", help="copy every process's log here before cleanup"
    )
    p.add_argument(
        "--keep-state", action="store_true", help="leave the temp state dir (servers stopped)"
    )
    p.add_argument("--json-out", metavar="FILE", help="also write the summary here")
    args = p.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    if args.drain_timeout is None:
        args.drain_timeout = 120 + 0.1 * (args.sales + args.refunds)
    if args.broker_down is None:
        args.broker_down = 3.0 if args.broker == "rabbitmq" else 1.0
    return args


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    args.t0 = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupt)  # `make` / pytest timeouts: still clean up
    rec = Recorder()
    stack = Stack(
        workers=args.workers,
        worker_concurrency=args.worker_concurrency,
        web_concurrency=args.web_concurrency,
        queued_lease=args.queued_lease,
        running_lease=args.running_lease,
        reconcile_interval=args.reconcile_interval,
        keep_state=args.keep_state,
        broker=args.broker,
    )
    summary: dict = {"ok": False, "config": {k: v for k, v in vars(args).items() if k != "t0"}}
    phases: dict = {}
    chaos = api = None
    exit_code = 2
    try:
        log(f"state dir {stack.state}; seed {args.seed}")
        stack.start_services()
        t = time.monotonic()
        mig = stack.manage("migrate", "--noinput")
        if mig.returncode != 0:
            raise RuntimeError(f"migrate failed: {mig.stderr[-800:]}")
        tok = stack.manage("create_api_token", "chaos")
        if tok.returncode != 0:
            raise RuntimeError(f"create_api_token failed: {tok.stderr[-800:]}")
        token = tok.stdout.strip().splitlines()[-1]
        stack.start_app()
        base = f"http://127.0.0.1:{stack.port}"
        ready = wait_http(f"{base}/readyz", 90)
        if ready is None or ready.status_code != 200:
            raise RuntimeError(
                f"stack not ready: {ready.text if ready is not None else 'no answer'}\n"
                f"{stack.web.tail()}"
            )
        api = Api(base, token, rec)
        run_id = uuid.uuid4().hex[:6].upper()
        load = Workload(
            api,
            rec,
            sales=args.sales,
            refunds=args.refunds,
            seed=args.seed,
            run_id=run_id,
            dup_rate=args.dup_rate,
            over_refund_rate=args.over_refund_rate,
            malformed_rate=args.malformed_rate,
        )
        load.lookup_sale_id = lambda number: checks.sale_id_by_number(
            stack.urls["DATABASE_URL"], number
        )
        summary["stock"] = load.setup_stock()
        phases["setup_s"] = round(time.monotonic() - args.t0, 1)
        log(f"stack up in {phases['setup_s']}s (web :{stack.port}); stock {summary['stock']}")

        # --- load and faults, together -------------------------------------------------
        total = args.sales + args.refunds
        fatal = threading.Event()
        chaos = Chaos(stack, rec, lambda: rec.done_flows / total, args, fatal)
        t = time.monotonic()
        chaos.start()
        if args.max_seconds:

            def watchdog():
                while not chaos.load_done.wait(1):
                    if time.monotonic() - args.t0 > 0.6 * args.max_seconds:
                        rec.violation(
                            "load_deadline_exceeded",
                            max_seconds=args.max_seconds,
                            flows_done=rec.done_flows,
                            flows_planned=total,
                        )
                        fatal.set()
                        return

            threading.Thread(target=watchdog, name="watchdog", daemon=True).start()
        refund_threads = [
            threading.Thread(
                target=load.refund_worker, args=(fatal,), name=f"refunds-{i}", daemon=True
            )
            for i in range(args.refund_threads)
        ]
        for th in refund_threads:
            th.start()
        last = 0.0
        with ThreadPoolExecutor(args.threads, thread_name_prefix="sales") as pool:
            futures = [
                pool.submit(lambda i=i: None if fatal.is_set() else load.sale_flow(i))
                for i in range(args.sales)
            ]
            try:
                while not all(f.done() for f in futures):
                    if time.monotonic() - last > 10:
                        last = time.monotonic()
                        log(
                            f"load: {rec.done_flows}/{total} flows, requests {sum(rec.requests.values())}, "
                            f"accepted jobs {len(rec.accepted)}"
                        )
                    time.sleep(0.5)
            except BaseException:  # SIGTERM/^C: stop submitting, let the in-flight flows end
                fatal.set()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        load.sale_flows_done.set()
        for th in refund_threads:
            while th.is_alive():
                th.join(5)
                if time.monotonic() - last > 10:
                    last = time.monotonic()
                    log(f"refunds: {load.refund_keys_sent}/{args.refunds} sent")
        chaos.load_done.set()
        phases["load_s"] = round(time.monotonic() - t, 1)
        log(f"load done in {phases['load_s']}s; finishing the chaos schedule")
        chaos.join()

        # --- drain, probe, verdict -------------------------------------------------------
        t = time.monotonic()
        drain_timeout = args.drain_timeout
        if args.max_seconds:
            drain_timeout = max(
                10.0, min(drain_timeout, args.max_seconds - (time.monotonic() - args.t0) - 30)
            )
        summary["drain"] = drain(stack, rec, drain_timeout)
        phases["drain_s"] = round(time.monotonic() - t, 1)
        log(f"drain: {summary['drain']}")
        t = time.monotonic()
        summary["probe"] = probe(stack, api, rec, args.queued_lease)
        summary["ledger"] = checks.check_ledger(stack)
        if not summary["ledger"].get("clean") or summary["ledger"].get("unfinished_jobs"):
            rec.violation(
                "check_ledger",
                report={
                    k: summary["ledger"].get(k)
                    for k in ("clean", "unfinished_jobs", "exit_code", "error")
                },
            )
        verdict = checks.verify(
            stack.urls["DATABASE_URL"], rec, load, allow_error_jobs=args.allow_error_jobs
        )
        if rec.server_errors:
            rec.violation("http_5xx", count=len(rec.server_errors), examples=rec.server_errors[:5])
        verdict["checks"]["no_http_500"] = (
            "ok" if not rec.server_errors else f"FAIL ({len(rec.server_errors)})"
        )
        summary["checks"] = verdict.pop("checks")
        phases["checks_s"] = round(time.monotonic() - t, 1)
        summary.update(verdict)
        summary["accounting"] = accounting(rec, load, args)
        if args.broker == "rabbitmq":
            summary["broker_queues"] = queues = stack.broker_queues()
            if (queues.get(DEAD_LETTER) or {}).get("messages"):
                # A job's message there would be a finding (its row still decides: the
                # reconciler re-sends it); expired periodic messages are a known one.
                summary["dead_letters"] = dead = stack.dead_letters()
                rec.finding("dead_lettered_messages", by_task_reason=dead)
        summary["chaos"] = chaos.summary()
        if (
            len(chaos.broker_restarts) < args.broker_restarts
            or len(chaos.pg_restarts) < args.pg_restarts
        ):
            rec.violation(
                "chaos_schedule_incomplete",
                broker=len(chaos.broker_restarts),
                postgres=len(chaos.pg_restarts),
            )
        exit_code = 0
    except KeyboardInterrupt:
        rec.violation("interrupted")
        exit_code = 130
    except Exception as exc:
        rec.violation("harness_failed", error=f"{type(exc).__name__}: {exc}"[:1500])
        log(f"harness failed: {type(exc).__name__}: {exc}")
        exit_code = 2
    finally:
        if chaos is not None:
            chaos.load_done.set()
            summary.setdefault("chaos", chaos.summary())
        with contextlib.suppress(Exception):
            summary["logs"] = log_stats(stack, rec)
        if api is not None:
            api.close()
        summary["teardown"] = stack.close(keep_logs=args.keep_logs)
    summary["requests"] = as_table(rec.requests)
    summary["mix"] = request_mix(rec.requests)
    summary["http_attempts"] = as_table(rec.attempts)
    summary["retries"] = dict(rec.retries)
    summary["duplicates"] = dict(rec.duplicates)
    summary["notes"] = dict(sorted(rec.notes.items()))
    summary["phases"] = phases
    summary["duration_s"] = round(time.monotonic() - args.t0, 1)
    summary["violation_counts"] = dict(rec.violation_counts)
    summary["violations"] = rec.violations
    summary["finding_counts"] = dict(rec.finding_counts)
    summary["findings"] = rec.findings
    if args.strict:
        for f in rec.findings:
            rec.violation(f"strict:{f['check']}", **{k: v for k, v in f.items() if k != "check"})
    summary["ok"] = exit_code == 0 and not rec.violations
    text = dumps(summary)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(text + "\n")
    print(text, flush=True)
    if exit_code == 0 and rec.violations:
        exit_code = 1
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
