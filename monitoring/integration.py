"""Integration run of the monitoring kit against a live local stack (issue 4, acceptance 2).

    .venv/bin/python monitoring/integration.py [--write-snapshot] [--keep-logs DIR]

1. harness.processes.Stack brings up embedded PostgreSQL + Redis (this run's own, in a temp dir),
   migrates, makes an API token, starts the web (bin/web, METRICS_TOKEN set) and one worker
   (bin/worker, metrics port; `lock_timeout` 300 ms through PGOPTIONS, retry backoff capped at
   2 s, 15 retries: a held row lock is a transient fault retried within seconds).
2. bin/celery-exporter runs against the same Redis on a free port.
3. The real `prometheus` binary runs a config generated from monitoring/prometheus/prometheus.yml:
   same rule_files (absolute paths), same jobs and metric_relabel_configs, but static targets
   on the local ports (labels copied from targets/*.yml), 2s scrape/evaluation interval (5s for the exporter, whose scrape takes ~2s), the
   bearer token from a temp file, no Alertmanager and no Flower (neither is started here).
4. A scripted load over HTTP: products + stock, ~100 paid sales incl. insufficient_stock,
   full refunds, over-refunds, idempotency conflicts (409), public leads incl. throttled 429s,
   invalid bodies, 401/404s. Then real failures, all on this run's own servers:
   a. transient DB faults retried: a row lock held from a separate connection makes a sale.paid
      job and two racing partial refunds (2 of 3 units each) time out on the lock and retry;
      released, the pay and one refund succeed, the other meets over_refund inside its job;
   b. retries exhausted: the lock is held until a sale.paid and a refund job give up: both fail
      with code `error` (an exception escapes the task);
   c. a PostgreSQL outage (fast shutdown of this run's postmaster, ~4 s): API requests are
      answered 503 `unavailable` with Retry-After; a job in its retry backoff meets the outage
      (reason db_unavailable) and succeeds after the restart;
   d. Redis refusing writes (maxmemory reached, noeviction) for one public lead submission:
      the throttle cannot count it: 503 unavailable, public_leads_requests_total{result="error"}.
   Then the periodic ledger check task is sent once (its verdict must be clean).
5. Every recording rule expr, alert expr and dashboard query goes through /api/v1/query;
   every metric name they reference is looked up in /api/v1/label/__name__/values.
6. web, worker and exporter are scraped directly too: every `# TYPE` family and sample name
   (after the job's metric_relabel_configs), with the names Prometheus stored per job, is
   compared with monitoring/scraped-metric-names.txt; `--write-snapshot` rewrites that file
   (only when the run passed). tests/integration/test_monitoring.py checks rules and dashboards against it.

Prints a table and a JSON summary; exits 1 on any query error or any referenced metric name
(or recording rule) without a series. Only processes and servers started here are stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psutil
import psycopg
import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness import client as api  # noqa: E402
from harness.client import Client  # noqa: E402
from harness.processes import BIN, Stack, free_port, logger  # noqa: E402
from monitoring.kit import (  # noqa: E402
    PROM,
    PROMETHEUS_BUILTINS,
    dashboard_exprs,
    promql_metric_names,
    recording_names,
    rules,
)
from monitoring.snapshot import SNAPSHOT, exposition_names, names_of, read_snapshot  # noqa: E402

log = logger("monitoring")

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
INTERVAL = "2s"
EXPORTER_INTERVAL = "5s"
LOCAL_JOBS = {
    "stockflow-web": "web",
    "stockflow-worker": "worker",
    "celery-exporter": "celery-exporter",
}
# The worker of this run: a lock wait longer than 300 ms is a transient fault (LockNotAvailable,
# retried); retries back off for at most 2 s (~1 s on average), 15 of them: a job in its backoff
# rides out the ~4 s PostgreSQL outage, and running out of them takes ~20 s, not minutes.
# JOB_MAX_ATTEMPTS (deliveries before a job is given up as a poison message, default 10) stays
# above the retries, as by default (5 < 10): the retries, not the delivery cap, run out.
WORKER_ENV = {
    "PGOPTIONS": "-c lock_timeout=300",
    "JOB_RETRY_BACKOFF_MAX_SECONDS": "2",
    "JOB_MAX_RETRIES": "15",
    "JOB_MAX_ATTEMPTS": "20",
}


# --- Grafana -> PromQL ---------------------------------------------------------------------


def grafana_to_promql(expr: str) -> str:
    """Grafana's interval variables as durations, any other $var as a match-all regex.
    (tests.integration.test_monitoring.grafana_to_promql maps every interval to 5m; here the brief's
    1m / 30s are used and dashboard variables are handled too.)"""
    expr = re.sub(r"\$__rate_interval\b|\$\{__rate_interval\}", "1m", expr)
    expr = re.sub(r"\$__interval\b|\$\{__interval\}", "30s", expr)
    expr = re.sub(r"\$__range\b|\$\{__range\}", "5m", expr)
    # label="$var" / label=~"$var" -> label=~".*"
    expr = re.sub(r'(\w+)\s*=~?\s*"\$\{?(\w+)(?::\w+)?\}?"', r'\1=~".*"', expr)
    return re.sub(r"\$\{?\w+(?::\w+)?\}?", ".*", expr)


# --- Prometheus config ---------------------------------------------------------------------


def prometheus_config(ports: dict[str, int], prom_port: int, token_file: Path) -> dict:
    src = yaml.safe_load((PROM / "prometheus.yml").read_text())
    cfg = {
        "global": {
            **src["global"],
            "scrape_interval": INTERVAL,
            "scrape_timeout": INTERVAL,
            "evaluation_interval": INTERVAL,
        },
        "rule_files": [str((PROM / f).resolve()) for f in src["rule_files"]],
        "scrape_configs": [],
    }
    for job in src["scrape_configs"]:
        name = job["job_name"]
        job = {
            k: v
            for k, v in job.items()
            if k not in ("file_sd_configs", "static_configs", "scrape_interval")
        }
        if name in LOCAL_JOBS:
            target_file = PROM / "targets" / f"{LOCAL_JOBS[name]}.yml"
            labels = yaml.safe_load(target_file.read_text())[0].get("labels", {})
            job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[name]}"], "labels": labels}]
            if name == "celery-exporter":
                # Each exporter scrape runs two `inspect` broadcasts (1s timeout each): 2s would time out.
                job["scrape_interval"] = job["scrape_timeout"] = EXPORTER_INTERVAL
            if "authorization" in job:
                job["authorization"] = {**job["authorization"], "credentials_file": str(token_file)}
        elif name == "prometheus":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{prom_port}"]}]
        else:
            continue  # flower, alertmanager: not started by this run
        cfg["scrape_configs"].append(job)
    return cfg


# --- scripted load -------------------------------------------------------------------------


class Load:
    def __init__(self, url: str, token: str):
        self.c = Client(url, token, timeout=30)
        self.anon = Client(url, timeout=30)
        self.codes: dict[str, dict[int, int]] = {}

    def req(self, what: str, method: str, path: str, client=None, **kw) -> httpx.Response:
        r = (client or self.c).request(method, path, **kw)
        self.codes.setdefault(what, {}).setdefault(r.status_code, 0)
        self.codes[what][r.status_code] += 1
        return r

    def wait_job(self, job_id: str, timeout: float = 60) -> dict:
        return api.wait_for_job(self.c, job_id, timeout, interval=0.2)

    def run(self, sales: int = 100) -> dict:
        run = uuid.uuid4().hex[:6]
        skus = {f"OK-{run}-{i}": 100_000 for i in range(3)}
        low = f"LOW-{run}"
        skus[low] = 3
        for sku, qty in skus.items():
            self.req("product", "POST", "/api/products", json={"sku": sku, "name": sku})
            self.req(
                "receipt",
                "POST",
                "/api/receipts",
                json={
                    "sku": sku,
                    "location": "MAIN",
                    "lot": f"L-{sku}",
                    "expires_on": "2099-12-31",
                    "quantity": qty,
                },
            )
        ok_skus = [s for s in skus if s != low]
        jobs: list[tuple[int, str]] = []
        for i in range(sales):
            short = (
                i % 10 == 9
            )  # every 10th sale wants more LOW stock than exists: insufficient_stock
            lines = (
                [{"sku": low, "quantity": 5, "unit_price": "1.00"}]
                if short
                else [{"sku": ok_skus[i % 3], "quantity": 2, "unit_price": "9.50"}]
            )
            r = self.req(
                "sale create",
                "POST",
                "/api/sales",
                json={"number": f"S-{run}-{i}", "location": "MAIN", "lines": lines},
            )
            if r.status_code != 201:
                continue
            sale = r.json()["id"]
            key = f"pay-{run}-{i}"
            r = self.req(
                "pay",
                "POST",
                f"/api/sales/{sale}/transition",
                json={"to_status": "paid"},
                headers={"Idempotency-Key": key},
            )
            if r.status_code == 202:
                jobs.append((sale, r.json()["job"]["id"]))
            if i % 25 == 0:  # the same key again: an idempotent replay
                self.req(
                    "pay replay",
                    "POST",
                    f"/api/sales/{sale}/transition",
                    json={"to_status": "paid"},
                    headers={"Idempotency-Key": key},
                )
        results: dict[str, int] = {}
        paid = []
        for sale, job_id in jobs:
            job = self.wait_job(job_id)
            outcome = job.get("status", "?") + (
                f":{job['error']['code']}" if job.get("error") else ""
            )
            results[outcome] = results.get(outcome, 0) + 1
            if job.get("status") == "succeeded":
                paid.append(sale)
        refund_results: dict[str, int] = {}
        refund_jobs = []
        for n, sale in enumerate(paid[:30]):
            key = f"refund-{run}-{n}"
            r = self.req(
                "refund",
                "POST",
                f"/api/sales/{sale}/refunds",
                json={"kind": "full"},
                headers={"Idempotency-Key": key},
            )
            if r.status_code == 202:
                refund_jobs.append(r.json()["job"]["id"])
            if n % 3 == 0:  # same key, different body: idempotency conflict (409)
                self.req(
                    "refund key conflict",
                    "POST",
                    f"/api/sales/{sale}/refunds",
                    json={"kind": "partial", "lines": [{"sale_line_id": 1, "quantity": 1}]},
                    headers={"Idempotency-Key": key},
                )
        for job_id in refund_jobs:
            job = self.wait_job(job_id)
            outcome = job.get("status", "?") + (
                f":{job['error']['code']}" if job.get("error") else ""
            )
            refund_results[outcome] = refund_results.get(outcome, 0) + 1
        over_jobs = []
        for n, sale in enumerate(paid[:10]):  # refunded in full already: over-refund
            r = self.req(
                "over-refund",
                "POST",
                f"/api/sales/{sale}/refunds",
                json={"kind": "full"},
                headers={"Idempotency-Key": f"again-{run}-{n}"},
            )
            if r.status_code == 202:
                over_jobs.append(r.json()["job"]["id"])
        for job_id in over_jobs:
            job = self.wait_job(job_id)
            outcome = (
                "over-refund job "
                + job.get("status", "?")
                + (f":{job['error']['code']}" if job.get("error") else "")
            )
            refund_results[outcome] = refund_results.get(outcome, 0) + 1
        for n, sale in enumerate(
            paid[30:40]
        ):  # partial refund beyond what was sold: over_refund (job fails)
            line = self.c.get(f"/api/sales/{sale}").json()["lines"][0]
            r = self.req(
                "over-refund partial",
                "POST",
                f"/api/sales/{sale}/refunds",
                json={
                    "kind": "partial",
                    "lines": [{"sale_line_id": line["id"], "quantity": line["quantity"] + 1}],
                },
                headers={"Idempotency-Key": f"over-{run}-{n}"},
            )
            if r.status_code == 202:
                over_jobs.append(r.json()["job"]["id"])
        for job_id in over_jobs[-10:]:
            job = self.wait_job(job_id)
            outcome = (
                "over-refund partial job "
                + job.get("status", "?")
                + (f":{job['error']['code']}" if job.get("error") else "")
            )
            refund_results[outcome] = refund_results.get(outcome, 0) + 1
        # Two partial refunds of everything, back to back: the second is normally refused at the
        # API (409 invalid_transition: the first job has already refunded the sale). The race in
        # which both are accepted and the second job meets over_refund is made certain in
        # Faults.lock_retries (a held row lock keeps both jobs from finishing).
        race_jobs = []
        for n, sale in enumerate(paid[40:50]):
            line = self.c.get(f"/api/sales/{sale}").json()["lines"][0]
            for k in range(2):
                r = self.req(
                    "refund race",
                    "POST",
                    f"/api/sales/{sale}/refunds",
                    json={
                        "kind": "partial",
                        "lines": [{"sale_line_id": line["id"], "quantity": line["quantity"]}],
                    },
                    headers={"Idempotency-Key": f"race-{run}-{n}-{k}"},
                )
                if r.status_code == 202:
                    race_jobs.append(r.json()["job"]["id"])
        for job_id in race_jobs:
            job = self.wait_job(job_id)
            outcome = (
                "race job "
                + job.get("status", "?")
                + (f":{job['error']['code']}" if job.get("error") else "")
            )
            refund_results[outcome] = refund_results.get(outcome, 0) + 1
        # invalid first: it spends throttle budget too, so it must come before the budget is gone
        self.req(
            "lead invalid",
            "POST",
            "/public/leads",
            client=self.anon,
            json={"name": "", "email": "nope"},
        )
        for n in range(8):  # 2/min per client: the rest are throttled (429)
            self.req(
                "lead",
                "POST",
                "/public/leads",
                client=self.anon,
                json={
                    "name": f"Lead {n}",
                    "email": f"lead{n}@example.com",
                    "message": "hi",
                    "source": "web",
                },
            )
        for _ in range(3):  # other 4xx: 404, 401, 422
            self.req("404", "GET", "/api/sales/999999999")
            self.req("401", "GET", "/api/stock", client=self.anon)
            self.req("422", "POST", "/api/products", json={"sku": "", "name": ""})
        self.req("stock", "GET", "/api/stock")
        return {"http": self.codes, "pay_jobs": results, "refund_jobs": refund_results}


# --- real failures, on this run's own servers ------------------------------------------------


class Faults:
    """Failures that make the fault-path metrics real: Celery retries (celery_task_retries_total,
    the exporter's celery_task_retried_total), jobs failing with `error` (exceptions_total from the
    worker, sale_refund_rollback_total, the availability SLIs' bad events), 503s during a database
    outage, and a 503 of the lead form while Redis refuses writes (its availability SLI's errors).

    Only this run's servers are touched: the postmaster whose data directory is in the stack's
    temp state dir, the Redis on the port recorded there."""

    def __init__(self, load: Load, stack: Stack):
        self.load, self.stack = load, stack
        self.db_url = stack.urls["DATABASE_URL"]
        self.report: dict = {}
        self.run = uuid.uuid4().hex[:6]

    # helpers ----------------------------------------------------------------------------------

    def _stock(self, tag: str, qty: int = 20) -> int:
        sku = f"{tag}-{self.run}"
        self.load.req("product", "POST", "/api/products", json={"sku": sku, "name": sku})
        r = self.load.req(
            "receipt",
            "POST",
            "/api/receipts",
            json={
                "sku": sku,
                "location": "MAIN",
                "lot": f"L-{sku}",
                "expires_on": "2099-12-31",
                "quantity": qty,
            },
        )
        r.raise_for_status()
        self._sku = sku
        return r.json()["batch_id"]

    def _sale(self, number: str, qty: int) -> dict:
        r = self.load.req(
            "sale create",
            "POST",
            "/api/sales",
            json={
                "number": f"{number}-{self.run}",
                "location": "MAIN",
                "lines": [{"sku": self._sku, "quantity": qty, "unit_price": "5.00"}],
            },
        )
        r.raise_for_status()
        return r.json()

    def _pay(self, sale: dict) -> str:
        r = self.load.req(
            "pay",
            "POST",
            f"/api/sales/{sale['id']}/transition",
            json={"to_status": "paid"},
            headers={"Idempotency-Key": f"pay-{sale['id']}-{self.run}"},
        )
        r.raise_for_status()
        return r.json()["job"]["id"]

    def _refund(self, what: str, sale: dict, key: str, body: dict) -> str | None:
        r = self.load.req(
            what,
            "POST",
            f"/api/sales/{sale['id']}/refunds",
            json=body,
            headers={"Idempotency-Key": f"{key}-{self.run}"},
        )
        return r.json()["job"]["id"] if r.status_code == 202 else None

    def _hold_lock(self, batch_id: int) -> psycopg.Connection:
        """An open transaction holding the stock row's lock, as a long report query or a stuck
        admin session would: the job locks it after the sale and waits (lock_timeout)."""
        conn = psycopg.connect(self.db_url, application_name="monitoring-integration-lock")
        conn.execute(
            "SELECT 1 FROM inventory_stockonhand WHERE batch_id = %s FOR UPDATE", [batch_id]
        )
        return conn

    @staticmethod
    def _release(conn: psycopg.Connection) -> None:
        with contextlib.suppress(psycopg.Error):  # the outage closed it
            conn.rollback()
        conn.close()

    def _wait_attempts(self, job_ids: list[str], n: int, timeout: float = 30) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            attempts = {j: api.job(self.load.c, j).json().get("attempts", 0) for j in job_ids}
            if all(a >= n for a in attempts.values()) or time.monotonic() > deadline:
                return attempts
            time.sleep(0.1)

    def _outcomes(self, job_ids: list[str], timeout: float = 90) -> list[str]:
        out = []
        for j in job_ids:
            job = self.load.wait_job(j, timeout)
            out.append(
                f"{job.get('status', '?')}"
                + (f":{job['error']['code']}" if job.get("error") else "")
                + f" (attempts {job.get('attempts')})"
            )
        return out

    # the failures -------------------------------------------------------------------------------

    def lock_retries(self) -> None:
        """a. A held stock row lock: a sale.paid job and two partial refunds (2 of 3 units each:
        both pass the API's check) all time out on the lock and retry. Released, the pay and one
        refund succeed; the other meets over_refund inside its job and is rolled back."""
        batch = self._stock("RETRY")
        sold = self._sale("S-RETRY-A", 3)
        first = self.load.wait_job(self._pay(sold))
        line = sold["lines"][0]
        other = self._sale("S-RETRY-B", 1)
        holder = self._hold_lock(batch)
        try:
            jobs = [self._pay(other)]
            for k in range(2):
                j = self._refund(
                    "refund race (lock held)",
                    sold,
                    f"race-{k}",
                    {"kind": "partial", "lines": [{"sale_line_id": line["id"], "quantity": 2}]},
                )
                if j:
                    jobs.append(j)
            attempts = self._wait_attempts(jobs, 2)
        finally:
            self._release(holder)
        self.report["a_lock_held_then_released"] = {
            "paid_before": first.get("status"),
            "jobs": len(jobs),
            "attempts_while_locked": sorted(attempts.values()),
            "outcomes": self._outcomes(jobs),
        }

    def retries_exhausted(self) -> None:
        """b. The lock stays until a sale.paid and a refund job run out of retries: both fail with
        `error`; the TransientError escapes the task (task_failure)."""
        batch = self._stock("STUCK")
        refundable = self._sale("S-STUCK-A", 1)
        first = self.load.wait_job(self._pay(refundable))
        stuck = self._sale("S-STUCK-B", 1)
        holder = self._hold_lock(batch)
        try:
            jobs = [self._pay(stuck)]
            j = self._refund("refund (lock held)", refundable, "stuck", {"kind": "full"})
            if j:
                jobs.append(j)
            outcomes = self._outcomes(jobs, timeout=120)
        finally:
            self._release(holder)
        self.report["b_lock_held_until_retries_ran_out"] = {
            "paid_before": first.get("status"),
            "outcomes": outcomes,
        }

    # PostgreSQL outage --------------------------------------------------------------------------

    def _postmaster(self) -> psutil.Process:
        # Ours: a postgres whose data directory is in this run's temp state dir.
        pid = self.stack.pg_pid()
        if pid is None:
            raise RuntimeError("this run's postmaster is not running")
        return psutil.Process(pid)

    def db_outage(self, down_s: float = 4.0) -> None:
        """c. PostgreSQL stopped (fast shutdown) for a few seconds, then started again."""
        batch = self._stock("OUTAGE")
        sale = self._sale("S-OUTAGE", 1)
        holder = self._hold_lock(batch)
        job = self._pay(sale)
        self._wait_attempts([job], 2)  # in its retry backoff: the next attempts meet the outage
        postmaster = self._postmaster()
        t0 = time.monotonic()
        answers = {}
        try:
            postmaster.send_signal(
                signal.SIGINT
            )  # fast shutdown: sessions (our lock holder too) end
            psutil.wait_procs([postmaster], timeout=30)
            self._release(holder)
            for what, method, path, kw in (
                ("GET /api/stock", "GET", "/api/stock", {}),
                (
                    "POST /api/sales",
                    "POST",
                    "/api/sales",
                    {
                        "json": {
                            "number": f"S-DOWN-{self.run}",
                            "location": "MAIN",
                            "lines": [{"sku": self._sku, "quantity": 1, "unit_price": "1.00"}],
                        }
                    },
                ),
                ("GET /api/jobs/<id>", "GET", f"/api/jobs/{job}", {}),
                ("GET /readyz", "GET", "/readyz", {}),
            ):
                r = self.load.req(f"{what} (database down)", method, path, **kw)
                body = (
                    r.json()
                    if r.headers.get("content-type", "").startswith("application/json")
                    else {}
                )
                err = body.get("error") if isinstance(body.get("error"), dict) else {}
                answers[what] = {
                    "status": r.status_code,
                    "code": err.get("code") or body.get("status"),
                    "retry_after": r.headers.get("Retry-After"),
                }
            time.sleep(max(0.0, down_s - (time.monotonic() - t0)))
        finally:
            self.stack.start_server("DATABASE_URL")
        down = round(time.monotonic() - t0, 1)
        # The web's pooled connections died with the server: the first request on one may still fail.
        recovered = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (
                self.load.req("GET /api/stock (after restart)", "GET", "/api/stock").status_code
                == 200
            ):
                recovered = round(time.monotonic() - t0, 1)
                break
            time.sleep(0.5)
        self.report["c_postgres_outage"] = {
            "down_s": down,
            "answers_while_down": answers,
            "api_ok_again_after_s": recovered,
            "job_caught_in_it": self._outcomes([job], timeout=90)[0],
        }

    def redis_refuses_writes(self) -> None:
        """d. Redis at maxmemory (noeviction) while one public lead is submitted: the throttle's
        INCR is refused; the API answers 503 unavailable and counts a lead-form server error."""
        r = redis.Redis.from_url(self.stack.urls["REDIS_URL"])
        port = (self.stack.state / "redis" / "port").read_text().strip()
        if r.connection_pool.connection_kwargs.get("port") != int(port):
            raise RuntimeError("not this run's Redis")
        before = r.config_get("maxmemory*")
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", "1")
        try:
            resp = self.load.req(
                "lead (Redis refusing writes)",
                "POST",
                "/public/leads",
                client=self.load.anon,
                json={"name": "Lead", "email": "oom@example.com", "message": "hi", "source": "web"},
            )
        finally:
            r.config_set("maxmemory", before["maxmemory"])
            r.config_set("maxmemory-policy", before["maxmemory-policy"])
        body = (
            resp.json()
            if resp.headers.get("content-type", "").startswith("application/json")
            else {}
        )
        self.report["d_redis_refusing_writes"] = {
            "lead_status": resp.status_code,
            "code": (body.get("error") or {}).get("code"),
        }

    def run_all(self) -> dict:
        for step in (
            self.lock_retries,
            self.retries_exhausted,
            self.db_outage,
            self.redis_refuses_writes,
        ):
            log(f"failure: {step.__doc__.split(chr(10))[0].strip()}")
            try:
                step()
            except Exception as exc:
                self.report[step.__name__ + "_error"] = f"{type(exc).__name__}: {exc}"[:500]
                log(f"failure step {step.__name__} broke: {exc}")
        return self.report


# --- queries -------------------------------------------------------------------------------


def query(prom: httpx.Client, expr: str) -> tuple[str, int, str]:
    try:
        r = prom.get("/api/v1/query", params={"query": expr})
        body = r.json()
    except Exception as exc:
        return "error", 0, str(exc)
    if body.get("status") != "success":
        return "error", 0, f"{body.get('errorType')}: {body.get('error')}"
    result = body["data"]["result"]
    return "ok", (len(result) if isinstance(result, list) else 1), ""


def evaluate(prom: httpx.Client) -> dict:
    exprs: list[tuple[str, str, str]] = []  # (kind, source, expr)
    for f, r in rules():
        if "record" in r:
            exprs.append(("rule", f"{f.name}: record {r['record']}", str(r["expr"])))
        else:
            exprs.append(("alert", f"{f.name}: alert {r['alert']}", str(r["expr"])))
    for name, title, expr in dashboard_exprs():
        if expr.strip():
            exprs.append(("dashboard", f"{name}: {title}", grafana_to_promql(expr)))

    present = set(prom.get("/api/v1/label/__name__/values").json()["data"])
    recorded = recording_names()
    rows, referenced = [], {}
    for kind, source, expr in exprs:
        status, n, err = query(prom, expr)
        rows.append(
            {
                "kind": kind,
                "source": source,
                "status": status,
                "series": n,
                "error": err,
                "expr": expr,
            }
        )
        for m in promql_metric_names(expr):
            referenced.setdefault(m, set()).add(source)

    # rule-recorded names must exist once the rule group has been evaluated
    raw = {m for m in referenced if m not in recorded}
    missing_raw = sorted(m for m in raw if m not in present)
    missing_recorded = sorted(m for m in recorded if m not in present)
    # Finer: selectors with exact label values (result="error", le="0.8", job="…"): does any
    # series over the run match? Reported, not failed: some outcomes need faults not staged here.
    selectors: dict[str, set[str]] = {}
    for _kind, source, expr in exprs:
        for sel in exact_selectors(expr):
            selectors.setdefault(sel, set()).add(source)
    empty_selectors = {}
    for sel, sources in sorted(selectors.items()):
        status, n, _ = query(prom, f"count(last_over_time({sel}[1h]))")
        if status != "ok" or n == 0:
            empty_selectors[sel] = sorted(sources)
    return {
        "rows": rows,
        "present": present,
        "referenced": referenced,
        "missing_raw": missing_raw,
        "missing_recorded": missing_recorded,
        "selectors_checked": len(selectors),
        "empty_selectors": empty_selectors,
    }


_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(=~|!=|!~|=)\s*"((?:[^"\\]|\\.)*)"')


def exact_selectors(expr: str) -> set[str]:
    """`name{label="value", …}` for every selector with exact-value matchers (others dropped)."""
    out = set()
    for name, body in _SELECTOR.findall(expr):
        if name in ("ALERTS", "ALERTS_FOR_STATE") or name in _NOT_SELECTORS:
            continue
        exact = [
            f'{label}="{value}"'
            for label, op, value in _MATCHER.findall(body)
            if op == "=" and value
        ]
        if exact:
            out.add(f"{name}{{{', '.join(sorted(exact))}}}")
    return out


_NOT_SELECTORS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


# --- the scraped-names snapshot ----------------------------------------------------------------


def _kept(name: str, relabels: list[dict]) -> bool:
    """Whether a job's metric_relabel_configs keep a series of this name (name-only rules)."""
    for r in relabels:
        action = r.get("action", "replace")
        if r.get("source_labels") != ["__name__"] or action not in ("drop", "keep"):
            raise ValueError(f"metric_relabel_config not understood here: {r}")
        if bool(re.fullmatch(r["regex"], name)) == (action == "drop"):
            return False
    return True


def observed_names(
    prom: httpx.Client, cfg: dict, targets: dict[str, tuple[str, dict]]
) -> dict[str, tuple[dict, set]]:
    """{target: ({family: type}, {sample name})} from a direct scrape of each target (`# TYPE`
    lines count: a labelled family with no child yet has no sample) and from the names
    Prometheus stored for its job over the whole run; both after the job's relabelling.
    Prometheus's own per-target series (up, scrape_*) are left out."""
    relabels = {j["job_name"]: j.get("metric_relabel_configs", []) for j in cfg["scrape_configs"]}
    out = {}
    for job, (url, headers) in targets.items():
        target = LOCAL_JOBS[job]
        resp = httpx.get(url, headers=headers, timeout=30)
        resp.raise_for_status()
        types, samples = exposition_names(resp.text)
        stored = prom.get(
            "/api/v1/label/__name__/values", params={"match[]": f'{{job="{job}"}}'}
        ).json()["data"]
        samples |= set(stored) - PROMETHEUS_BUILTINS
        keep = relabels[job]
        out[target] = (
            {n: k for n, k in types.items() if _kept(n, keep)},
            {n for n in samples if _kept(n, keep)},
        )
    return out


def snapshot_text(observed: dict[str, tuple[dict, set]]) -> str:
    rows = []
    for target in sorted(observed):
        types, samples = observed[target]
        for name in sorted(set(types) | samples):
            if name in types:
                rows.append((target, "type", name, types[name]))
            if name in samples:
                rows.append((target, "sample", name, ""))
    w0, w2 = max(len(r[0]) for r in rows), max(len(r[2]) for r in rows)
    header = """\
# Metric names seen in real scrapes of stockflow's web and worker and of celery-exporter after
# the scripted load of monitoring/integration.py (failures included: retries, jobs failing
# with `error`, a PostgreSQL outage, Redis refusing writes). Generated, do not edit:
#
#     .venv/bin/python monitoring/integration.py --write-snapshot
#
# `type`: a `# TYPE` line of a direct scrape (the family exists, maybe without samples yet);
# `sample`: a sample name (direct scrape, or stored by Prometheus for that job), after the
# job's metric_relabel_configs (no *_created). Prometheus's own up/scrape_* are not listed.
# tests/integration/test_monitoring.py: every metric a rule or dashboard names must be here (or be a
# recording rule or a Prometheus built-in). tests/integration/test_metrics.py: every name here must be in
# the live expositions of a real web, worker and celery-exporter.
#
"""
    body = "\n".join(
        f"{t.ljust(w0)}  {src.ljust(6)}  {n.ljust(w2)}  {k}".rstrip() for t, src, n, k in rows
    )
    return header + body + "\n"


def snapshot_drift(observed: dict[str, tuple[dict, set]]) -> dict:
    """Names this run saw that the committed snapshot lacks, and the reverse."""
    try:
        committed = read_snapshot()
    except FileNotFoundError:
        committed = {}
    drift = {}
    for target in sorted(set(observed) | set(committed)):
        now = names_of(*observed.get(target, ({}, set())))
        then = names_of(*committed.get(target, ({}, set())))
        if now - then or then - now:
            drift[target] = {"new": sorted(now - then), "gone": sorted(then - now)}
    return drift


def print_report(res: dict, load: dict) -> dict:
    rows = res["rows"]
    w = max(len(r["source"]) for r in rows)
    print(f"\n{'source'.ljust(w)}  status  #series")
    for r in rows:
        print(
            f"{r['source'].ljust(w)}  {r['status']:6}  {r['series']:7}"
            + (f"  {r['error']}" if r["error"] else "")
        )
    summary = {}
    for kind, label in (("rule", "rules"), ("alert", "alerts"), ("dashboard", "dashboards")):
        mine = [r for r in rows if r["kind"] == kind]
        summary[f"{label}_ok"] = sum(r["status"] == "ok" for r in mine)
        summary[f"{label}_error"] = sum(r["status"] != "ok" for r in mine)
        summary[f"{label}_nonempty"] = sum(r["status"] == "ok" and r["series"] > 0 for r in mine)
        summary[f"{label}_empty"] = sum(r["status"] == "ok" and r["series"] == 0 for r in mine)
    summary["errors"] = [
        {"source": r["source"], "error": r["error"]} for r in rows if r["status"] != "ok"
    ]
    summary["referenced_metric_names"] = len(res["referenced"])
    summary["missing_metrics"] = {m: sorted(res["referenced"][m]) for m in res["missing_raw"]}
    summary["missing_recorded_series"] = res["missing_recorded"]
    summary["exact_selectors_checked"] = res["selectors_checked"]
    summary["exact_selectors_without_series"] = res["empty_selectors"]
    summary["snapshot"] = res.get("snapshot", {})
    summary["load"] = load
    print("\nSUMMARY " + json.dumps(summary, indent=2, sort_keys=False))
    return summary


def _ts(rfc3339: str) -> float:
    """Prometheus's lastEvaluation (RFC 3339, nanoseconds) as Unix time; 0 if never."""
    from datetime import datetime

    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", rfc3339 or "")
    if not m or m.group(1).startswith("0001"):
        return 0.0
    tz = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.fromisoformat(m.group(1) + tz).timestamp() + float(m.group(2) or 0)


# --- main ----------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--keep-logs", type=Path, help="copy the process logs (and prometheus.yml) here"
    )
    ap.add_argument("--sales", type=int, default=100)
    ap.add_argument(
        "--write-snapshot",
        action="store_true",
        help=f"rewrite {SNAPSHOT.relative_to(ROOT)} from this run's scrapes (only if the run passes)",
    )
    args = ap.parse_args()

    stack = Stack(web_concurrency=2, web_threads=4, worker_concurrency=2, prefix="sfmonitoring.")
    token_file = stack.state / "metrics_token"
    metrics_token = uuid.uuid4().hex
    rc = 1
    try:
        log("starting PostgreSQL + Redis")
        stack.start_services()
        stack.migrate()
        api_token = stack.api_token("integration")
        stack.base_env["METRICS_TOKEN"] = metrics_token
        token_file.write_text(metrics_token)

        web = stack.start_web()
        web_url = web.url
        worker_port = stack.start_worker(env=WORKER_ENV, metrics=True).metrics_port
        log(f"web {web_url}, worker metrics :{worker_port}")

        exporter_port = free_port()
        stack.start(
            "celery-exporter",
            [str(BIN / "celery-exporter")],
            {
                "CELERY_BROKER_URL": stack.urls["REDIS_URL"],
                "EXPORTER_PORT": str(exporter_port),
                "EXPORTER_ADDRESS": "127.0.0.1",
            },
            ready_url=f"http://127.0.0.1:{exporter_port}/",  # /metrics takes ~2s (inspect)
        )
        log(f"celery-exporter :{exporter_port}")

        prom_port = free_port()
        ports = {
            "stockflow-web": web.port,
            "stockflow-worker": worker_port,
            "celery-exporter": exporter_port,
        }
        cfg_path = stack.state / "prometheus.yml"
        cfg = prometheus_config(ports, prom_port, token_file)
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        check = subprocess.run(
            ["promtool", "check", "config", str(cfg_path)], capture_output=True, text=True
        )
        if check.returncode:
            raise RuntimeError(f"generated config invalid:\n{check.stdout}{check.stderr}")
        prom_url = f"http://127.0.0.1:{prom_port}"
        stack.start(
            "prometheus",
            [
                PROMETHEUS,
                f"--config.file={cfg_path}",
                f"--storage.tsdb.path={stack.state / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            ready_url=prom_url + "/-/ready",
        )
        prom = httpx.Client(base_url=prom_url, timeout=30)
        log(f"prometheus {prom_url} (config {cfg_path})")

        time.sleep(
            5
        )  # a first scrape of every target before the load: counters start from a baseline
        log("scripted load")
        loader = Load(web_url, api_token)
        load = loader.run(args.sales)
        log(f"load done: {json.dumps(load)}")
        load["failures"] = Faults(loader, stack).run_all()
        load["http"] = loader.codes
        log(f"failures done: {json.dumps(load['failures'])}")
        # The periodic ledger check (beat is not started here): one run feeds stockflow_ledger_*.
        celery = Path(sys.executable).parent / "celery"
        sent = subprocess.run(
            [str(celery), "-A", "workers.celery", "call", "stockflow.check_ledger"],
            cwd=ROOT,
            env={k: v for k, v in stack.base_env.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        load["ledger_check_sent"] = sent.returncode == 0
        if sent.returncode:
            log(
                f"celery call stockflow.check_ledger failed: {sent.stdout[-500:]}{sent.stderr[-1500:]}"
            )
        time.sleep(
            14
        )  # > 2 scrape + evaluation cycles (2s; the exporter 5s) after the last request

        # Groups with a long `interval` (1m) may last have been evaluated before the load: wait
        # (bounded) until every rule group has been evaluated after the last request.
        load_end = time.time()
        deadline = time.monotonic() + 75
        while time.monotonic() < deadline:
            groups = prom.get("/api/v1/rules").json()["data"]["groups"]
            pending = [g["name"] for g in groups if _ts(g.get("lastEvaluation", "")) < load_end]
            if not pending:
                break
            time.sleep(2)
        load["rule_groups_not_evaluated_after_load"] = pending
        verdict = prom.get(
            "/api/v1/query", params={"query": "max(stockflow_ledger_violations)"}
        ).json()
        result = verdict.get("data", {}).get("result") or []
        load["ledger_violations_after_run"] = float(result[0]["value"][1]) if result else None
        # What the failures left in Prometheus, for the record.
        load["fault_series"] = {}
        for expr in (
            "sum by (task, reason) (celery_task_retries_total)",
            "sum by (exception_type, location) (exceptions_total)",
            "sum by (reason) (sale_refund_rollback_total)",
            'sum by (result) (sales_paid_stock_consume_total{result="error"})',
            'sum by (type, result) (sale_refunds_total{result="error"})',
            'sum by (route, status) (http_requests_total{status=~"5.."})',
            "sum by (name, exception) (celery_task_failed_total) > 0",
            "sum by (name) (celery_task_retried_total)",
        ):
            data = (
                prom.get("/api/v1/query", params={"query": expr})
                .json()
                .get("data", {})
                .get("result", [])
            )
            load["fault_series"][expr] = {
                ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items())) or "{}": float(
                    r["value"][1]
                )
                for r in data
            }
        targets = prom.get("/api/v1/targets").json()["data"]["activeTargets"]
        load["targets"] = {
            t["labels"]["job"]: t["health"] + (f" ({t['lastError']})" if t["lastError"] else "")
            for t in targets
        }
        res = evaluate(prom)
        observed = observed_names(
            prom,
            cfg,
            {
                "stockflow-web": (
                    f"{web_url}/metrics",
                    {"Authorization": f"Bearer {metrics_token}"},
                ),
                "stockflow-worker": (f"http://127.0.0.1:{worker_port}/metrics", {}),
                "celery-exporter": (f"http://127.0.0.1:{exporter_port}/metrics", {}),
            },
        )
        res["snapshot"] = {
            "file": str(SNAPSHOT.relative_to(ROOT)),
            "written": False,
            "names": {t: len(names_of(*v)) for t, v in observed.items()},
            "drift_from_committed": snapshot_drift(observed),
        }
        errors = sum(r["status"] != "ok" for r in res["rows"])
        rc = 1 if errors or res["missing_raw"] or res["missing_recorded"] else 0
        if args.write_snapshot and rc == 0:
            SNAPSHOT.write_text(snapshot_text(observed))
            res["snapshot"]["written"] = True
        print_report(res, load)
    finally:
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            if (stack.state / "prometheus.yml").exists():
                shutil.copy2(stack.state / "prometheus.yml", args.keep_logs / "prometheus.yml")
        info = stack.close(keep_logs=args.keep_logs)
        log(f"stopped everything {json.dumps(info)}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
