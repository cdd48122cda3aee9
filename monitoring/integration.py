"""Integration run of the monitoring kit against a live local stack (issue 4, acceptance 2).

    .venv/bin/python monitoring/integration.py [--keep-logs DIR]

1. bench/stack.Stack brings up embedded PostgreSQL + Redis, migrates, makes an API token,
   starts the web (bin/web, METRICS_TOKEN set) and one worker (bin/worker, metrics port).
2. bin/celery-exporter runs against the same Redis on a free port.
3. The real `prometheus` binary runs a config generated from monitoring/prometheus/prometheus.yml:
   same rule_files (absolute paths), same jobs and metric_relabel_configs, but static targets
   on the local ports (labels copied from targets/*.yml), 2s scrape/evaluation interval (5s for the exporter, whose scrape takes ~2s), the
   bearer token from a temp file, no Alertmanager and no Flower (neither is started here).
4. A scripted load over HTTP: products + stock, ~100 paid sales incl. insufficient_stock,
   full refunds, over-refunds, idempotency conflicts (409), public leads incl. throttled 429s,
   invalid bodies, 401/404s; then the periodic ledger check task is sent once.
5. Every recording rule expr, alert expr and dashboard query goes through /api/v1/query;
   every metric name they reference is looked up in /api/v1/label/__name__/values.

Prints a table and a JSON summary; exits 1 on any query error (missing metric names are
reported as findings, they do not fail the run). Only processes started here are stopped.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stack import Proc, Stack, free_port, log  # noqa: E402
from tests.test_monitoring import (  # noqa: E402
    PROM, PROMETHEUS_BUILTINS, _CATALOGUE, _HISTOGRAM, dashboard_exprs, promql_metric_names, recording_names, rules,
)

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
INTERVAL = "2s"
EXPORTER_INTERVAL = "5s"
LOCAL_JOBS = {"stockflow-web": "web", "stockflow-worker": "worker", "celery-exporter": "celery-exporter"}


# --- Grafana -> PromQL ---------------------------------------------------------------------

def grafana_to_promql(expr: str) -> str:
    """Grafana's interval variables as durations, any other $var as a match-all regex.
    (tests.test_monitoring.grafana_to_promql maps every interval to 5m; here the brief's
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
        "global": {**src["global"], "scrape_interval": INTERVAL, "scrape_timeout": INTERVAL,
                   "evaluation_interval": INTERVAL},
        "rule_files": [str((PROM / f).resolve()) for f in src["rule_files"]],
        "scrape_configs": [],
    }
    for job in src["scrape_configs"]:
        name = job["job_name"]
        job = {k: v for k, v in job.items() if k not in ("file_sd_configs", "static_configs", "scrape_interval")}
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
        self.c = httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"})
        self.anon = httpx.Client(base_url=url, timeout=30)
        self.codes: dict[str, dict[int, int]] = {}

    def req(self, what: str, method: str, path: str, client=None, **kw) -> httpx.Response:
        r = (client or self.c).request(method, path, **kw)
        self.codes.setdefault(what, {}).setdefault(r.status_code, 0)
        self.codes[what][r.status_code] += 1
        return r

    def wait_job(self, job_id: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.c.get(f"/api/jobs/{job_id}").json()
            if job.get("status") in ("succeeded", "failed", "dead", "cancelled"):
                return job
            time.sleep(0.2)
        return job

    def run(self, sales: int = 100) -> dict:
        run = uuid.uuid4().hex[:6]
        skus = {f"OK-{run}-{i}": 100_000 for i in range(3)}
        low = f"LOW-{run}"
        skus[low] = 3
        for sku, qty in skus.items():
            self.req("product", "POST", "/api/products", json={"sku": sku, "name": sku})
            self.req("receipt", "POST", "/api/receipts",
                     json={"sku": sku, "location": "MAIN", "lot": f"L-{sku}", "expires_on": "2099-12-31", "quantity": qty})
        ok_skus = [s for s in skus if s != low]
        jobs: list[tuple[int, str]] = []
        for i in range(sales):
            short = i % 10 == 9  # every 10th sale wants more LOW stock than exists: insufficient_stock
            lines = [{"sku": low, "quantity": 5, "unit_price": "1.00"}] if short else \
                [{"sku": ok_skus[i % 3], "quantity": 2, "unit_price": "9.50"}]
            r = self.req("sale create", "POST", "/api/sales", json={"number": f"S-{run}-{i}", "location": "MAIN", "lines": lines})
            if r.status_code != 201:
                continue
            sale = r.json()["id"]
            key = f"pay-{run}-{i}"
            r = self.req("pay", "POST", f"/api/sales/{sale}/transition", json={"to_status": "paid"},
                         headers={"Idempotency-Key": key})
            if r.status_code == 202:
                jobs.append((sale, r.json()["job"]["id"]))
            if i % 25 == 0:  # the same key again: an idempotent replay
                self.req("pay replay", "POST", f"/api/sales/{sale}/transition", json={"to_status": "paid"},
                         headers={"Idempotency-Key": key})
        results: dict[str, int] = {}
        paid = []
        for sale, job_id in jobs:
            job = self.wait_job(job_id)
            outcome = job.get("status", "?") + (f":{job['error']['code']}" if job.get("error") else "")
            results[outcome] = results.get(outcome, 0) + 1
            if job.get("status") == "succeeded":
                paid.append(sale)
        refund_results: dict[str, int] = {}
        refund_jobs = []
        for n, sale in enumerate(paid[:30]):
            key = f"refund-{run}-{n}"
            r = self.req("refund", "POST", f"/api/sales/{sale}/refunds", json={"kind": "full"}, headers={"Idempotency-Key": key})
            if r.status_code == 202:
                refund_jobs.append(r.json()["job"]["id"])
            if n % 3 == 0:  # same key, different body: idempotency conflict (409)
                self.req("refund key conflict", "POST", f"/api/sales/{sale}/refunds",
                         json={"kind": "partial", "lines": [{"sale_line_id": 1, "quantity": 1}]},
                         headers={"Idempotency-Key": key})
        for job_id in refund_jobs:
            job = self.wait_job(job_id)
            outcome = job.get("status", "?") + (f":{job['error']['code']}" if job.get("error") else "")
            refund_results[outcome] = refund_results.get(outcome, 0) + 1
        over_jobs = []
        for n, sale in enumerate(paid[:10]):  # refunded in full already: over-refund
            r = self.req("over-refund", "POST", f"/api/sales/{sale}/refunds", json={"kind": "full"},
                         headers={"Idempotency-Key": f"again-{run}-{n}"})
            if r.status_code == 202:
                over_jobs.append(r.json()["job"]["id"])
        for job_id in over_jobs:
            job = self.wait_job(job_id)
            outcome = "over-refund job " + job.get("status", "?") + (f":{job['error']['code']}" if job.get("error") else "")
            refund_results[outcome] = refund_results.get(outcome, 0) + 1
        for n, sale in enumerate(paid[30:40]):  # partial refund beyond what was sold: over_refund (job fails)
            line = self.c.get(f"/api/sales/{sale}").json()["lines"][0]
            r = self.req("over-refund partial", "POST", f"/api/sales/{sale}/refunds",
                         json={"kind": "partial", "lines": [{"sale_line_id": line["id"], "quantity": line["quantity"] + 1}]},
                         headers={"Idempotency-Key": f"over-{run}-{n}"})
            if r.status_code == 202:
                over_jobs.append(r.json()["job"]["id"])
        for job_id in over_jobs[-10:]:
            job = self.wait_job(job_id)
            outcome = "over-refund partial job " + job.get("status", "?") + (f":{job['error']['code']}" if job.get("error") else "")
            refund_results[outcome] = refund_results.get(outcome, 0) + 1
        # Two partial refunds of everything, back to back: both pass the request-time check, the
        # second one's job meets over_refund and rolls back (sale_refund_rollback_total).
        race_jobs = []
        for n, sale in enumerate(paid[40:50]):
            line = self.c.get(f"/api/sales/{sale}").json()["lines"][0]
            for k in range(2):
                r = self.req("refund race", "POST", f"/api/sales/{sale}/refunds",
                             json={"kind": "partial", "lines": [{"sale_line_id": line["id"], "quantity": line["quantity"]}]},
                             headers={"Idempotency-Key": f"race-{run}-{n}-{k}"})
                if r.status_code == 202:
                    race_jobs.append(r.json()["job"]["id"])
        for job_id in race_jobs:
            job = self.wait_job(job_id)
            outcome = "race job " + job.get("status", "?") + (f":{job['error']['code']}" if job.get("error") else "")
            refund_results[outcome] = refund_results.get(outcome, 0) + 1
        # invalid first: it spends throttle budget too, so it must come before the budget is gone
        self.req("lead invalid", "POST", "/public/leads", client=self.anon, json={"name": "", "email": "nope"})
        for n in range(8):  # 2/min per client: the rest are throttled (429)
            self.req("lead", "POST", "/public/leads", client=self.anon,
                     json={"name": f"Lead {n}", "email": f"lead{n}@example.com", "message": "hi", "source": "web"})
        for _ in range(3):  # other 4xx: 404, 401, 422
            self.req("404", "GET", "/api/sales/999999999")
            self.req("401", "GET", "/api/stock", client=self.anon)
            self.req("422", "POST", "/api/products", json={"sku": "", "name": ""})
        self.req("stock", "GET", "/api/stock")
        return {"http": self.codes, "pay_jobs": results, "refund_jobs": refund_results}


# --- queries -------------------------------------------------------------------------------

def query(prom: httpx.Client, expr: str) -> tuple[str, int, str]:
    try:
        r = prom.get("/api/v1/query", params={"query": expr})
        body = r.json()
    except Exception as exc:  # noqa: BLE001
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
        rows.append({"kind": kind, "source": source, "status": status, "series": n, "error": err, "expr": expr})
        for m in promql_metric_names(expr):
            referenced.setdefault(m, set()).add(source)

    # rule-recorded names must exist once the rule group has been evaluated
    raw = {m for m in referenced if m not in recorded}
    missing_raw = sorted(m for m in raw if m not in present)
    missing_recorded = sorted(m for m in recorded if m not in present)
    catalogue = set()
    for name, kind in _CATALOGUE.items():
        catalogue |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == _HISTOGRAM else {name}
    return {
        "rows": rows,
        "present": present,
        "referenced": referenced,
        "missing_raw": missing_raw,
        "missing_recorded": missing_recorded,
        "catalogue_missing": sorted(catalogue - present),
    }


def print_report(res: dict, load: dict) -> dict:
    rows = res["rows"]
    w = max(len(r["source"]) for r in rows)
    print(f"\n{'source'.ljust(w)}  status  #series")
    for r in rows:
        print(f"{r['source'].ljust(w)}  {r['status']:6}  {r['series']:7}" + (f"  {r['error']}" if r["error"] else ""))
    summary = {}
    for kind, label in (("rule", "rules"), ("alert", "alerts"), ("dashboard", "dashboards")):
        mine = [r for r in rows if r["kind"] == kind]
        summary[f"{label}_ok"] = sum(r["status"] == "ok" for r in mine)
        summary[f"{label}_error"] = sum(r["status"] != "ok" for r in mine)
        summary[f"{label}_nonempty"] = sum(r["status"] == "ok" and r["series"] > 0 for r in mine)
        summary[f"{label}_empty"] = sum(r["status"] == "ok" and r["series"] == 0 for r in mine)
    summary["errors"] = [{"source": r["source"], "error": r["error"]} for r in rows if r["status"] != "ok"]
    summary["referenced_metric_names"] = len(res["referenced"])
    summary["missing_metrics"] = {m: sorted(res["referenced"][m]) for m in res["missing_raw"]}
    summary["missing_recorded_series"] = res["missing_recorded"]
    summary["catalogue_names_not_scraped"] = [m for m in res["catalogue_missing"] if m not in PROMETHEUS_BUILTINS]
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
    ap.add_argument("--keep-logs", type=Path, help="copy the process logs (and prometheus.yml) here")
    ap.add_argument("--sales", type=int, default=100)
    args = ap.parse_args()

    stack = Stack(web_concurrency=2, web_threads=4, worker_concurrency=2)
    exporter: Proc | None = None
    prometheus: Proc | None = None
    token_file = stack.state / "metrics_token"
    metrics_token = uuid.uuid4().hex
    summary: dict = {}
    rc = 1
    try:
        log("starting PostgreSQL + Redis")
        stack.start_services()
        mig = stack.manage("migrate", "--noinput")
        if mig.returncode:
            raise RuntimeError(f"migrate failed:\n{mig.stdout[-2000:]}\n{mig.stderr[-2000:]}")
        tok = stack.manage("create_api_token", "integration")
        if tok.returncode:
            raise RuntimeError(f"create_api_token failed: {tok.stderr[-1000:]}")
        api_token = tok.stdout.strip().splitlines()[-1]
        stack.base_env["METRICS_TOKEN"] = metrics_token
        token_file.write_text(metrics_token)

        _, web_url = stack.start_web()
        _, worker_port = stack.start_worker()
        log(f"web {web_url}, worker metrics :{worker_port}")

        exporter_port = free_port()
        env = dict(stack.base_env, CELERY_BROKER_URL=stack.urls["REDIS_URL"], EXPORTER_PORT=str(exporter_port),
                   EXPORTER_ADDRESS="127.0.0.1")
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        exporter = Proc("celery-exporter", [str(ROOT / "bin" / "celery-exporter")], env,
                        stack.logs / "celery-exporter.log").start()
        stack.procs["celery-exporter"] = exporter  # stopped by stack.close()
        Stack._wait_http(exporter, f"http://127.0.0.1:{exporter_port}/")  # /metrics takes ~2s (inspect)
        log(f"celery-exporter :{exporter_port}")

        prom_port = free_port()
        ports = {"stockflow-web": int(web_url.rsplit(":", 1)[1]), "stockflow-worker": worker_port,
                 "celery-exporter": exporter_port}
        cfg_path = stack.state / "prometheus.yml"
        cfg_path.write_text(yaml.safe_dump(prometheus_config(ports, prom_port, token_file), sort_keys=False))
        check = subprocess.run(["promtool", "check", "config", str(cfg_path)], capture_output=True, text=True)
        if check.returncode:
            raise RuntimeError(f"generated config invalid:\n{check.stdout}{check.stderr}")
        prometheus = Proc("prometheus", [PROMETHEUS, f"--config.file={cfg_path}",
                                         f"--storage.tsdb.path={stack.state / 'tsdb'}",
                                         f"--web.listen-address=127.0.0.1:{prom_port}"],
                          dict(stack.base_env), stack.logs / "prometheus.log").start()
        stack.procs["prometheus"] = prometheus
        prom_url = f"http://127.0.0.1:{prom_port}"
        Stack._wait_http(prometheus, prom_url + "/-/ready")
        prom = httpx.Client(base_url=prom_url, timeout=30)
        log(f"prometheus {prom_url} (config {cfg_path})")

        time.sleep(5)  # a first scrape of every target before the load: counters start from a baseline
        log("scripted load")
        load = Load(web_url, api_token).run(args.sales)
        log(f"load done: {json.dumps(load)}")
        # The periodic ledger check (beat is not started here): one run feeds stockflow_ledger_*.
        celery = Path(sys.executable).parent / "celery"
        sent = subprocess.run([str(celery), "-A", "workers.celery_app", "call", "stockflow.check_ledger"], cwd=ROOT,
                              env={k: v for k, v in stack.base_env.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
                              capture_output=True, text=True, timeout=60)
        load["ledger_check_sent"] = sent.returncode == 0
        if sent.returncode:
            log(f"celery call stockflow.check_ledger failed: {sent.stdout[-500:]}{sent.stderr[-1500:]}")
        time.sleep(14)  # > 2 scrape + evaluation cycles (2s; the exporter 5s) after the last request

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
        targets = prom.get("/api/v1/targets").json()["data"]["activeTargets"]
        load["targets"] = {t["labels"]["job"]: t["health"] + (f" ({t['lastError']})" if t["lastError"] else "")
                           for t in targets}
        res = evaluate(prom)
        summary = print_report(res, load)
        errors = summary["alerts_error"] + summary["rules_error"] + summary["dashboards_error"]
        rc = 1 if errors else 0
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
