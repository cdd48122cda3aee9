"""python -m bench.cpu: CPU per accept and per PAID job, in-process, observability off vs on.

The levers in bench/README.md were judged by CPU, which moves less with the neighbours
than rates do. This measures the two hot paths without gunicorn or Celery around them,
on our own embedded PostgreSQL and Redis (a temp state dir, as `python -m bench`):

  accept  POST /api/sales/{id}/transition {"to_status": "paid"} through Django's test
          client: every middleware, auth, the job + audit transaction, the broker publish
  job     stockflow.stock.services.runner.run(job_id, HANDLERS): the worker's service path (claim, locks,
          FEFO, moves, finish), for jobs accepted just before (untimed)

Each (path, mode) runs in its own child process, because logging and Sentry are set up
at import: mode "off" = LOG_LEVEL=WARNING, no Sentry; "on" = LOG_LEVEL=INFO and Sentry
(to a local sink) started as the web (config/wsgi.py) or a worker (celeryd_init) starts it.
Prints one JSON document: CPU ms per operation (time.process_time of the child), and
the on/off ratio as the baseline comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from bench.stack import PY, ROOT, Stack, log

SKUS = 50


def child(path: str, n: int) -> dict:
    from stockflow.observability import sentry

    if os.environ.get("SENTRY_DSN"):
        sentry.init(django=(path == "accept"))  # as config/wsgi.py; as a Celery worker
    import random
    import uuid

    import django

    from stockflow.observability import logging as log_config

    log_config.configure()  # as bootstrap() would; Sentry was chosen above per path
    django.setup()
    from django.test import Client

    from bench import db
    from stockflow.accounts.models import ApiToken
    from stockflow.stock.services import runner as jobs
    from stockflow.stock.services.handlers import HANDLERS

    prefix = f"{path}-{uuid.uuid4().hex[:6]}"
    skus = [f"{prefix}-{i}" for i in range(SKUS)]
    db.seed_stock("CPU", skus, 10 * n)
    warm = 30
    ids = db.create_sales(prefix, "CPU", db.spread_lines(warm + n, skus, 3, random.Random(7)))
    _, raw = ApiToken.issue("bench-cpu")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")

    def accept(sale_id) -> str:
        r = client.post(
            f"/api/sales/{sale_id}/transition",
            {"to_status": "paid"},
            content_type="application/json",
            HTTP_IDEMPOTENCY_KEY=uuid.uuid4().hex,
        )
        assert r.status_code == 202, (r.status_code, r.content)
        return r.json()["job"]["id"]

    timed = ids[warm:]
    if path == "accept":
        for s in ids[:warm]:
            accept(s)
        t = time.process_time()
        for s in timed:
            accept(s)
        cpu = time.process_time() - t
    else:
        job_ids = [accept(s) for s in ids]
        for j in job_ids[:warm]:
            jobs.run(j, HANDLERS)
        t = time.process_time()
        finished = [jobs.run(j, HANDLERS) for j in job_ids[warm:]]
        cpu = time.process_time() - t
        assert all(j is not None and j.status == "succeeded" for j in finished), (
            "a timed job did not succeed"
        )
    return {"n": n, "cpu_ms": round(1000 * cpu / n, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser("python -m bench.cpu", description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=300, help="timed operations per (path, mode)")
    ap.add_argument("--child", choices=["accept", "job"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.n)))
        return 0

    from bench.sentry_sink import SentrySink

    stack, sink = Stack(), SentrySink()
    try:
        log(f"state dir {stack.state}: starting our own embedded PostgreSQL and Redis")
        stack.start_services()
        stack.migrate()
        modes = {
            "off": {"LOG_LEVEL": "WARNING"},
            "on": {"LOG_LEVEL": "INFO", "SENTRY_DSN": sink.dsn},
        }
        result: dict = {"machine": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()}}
        for path in ("accept", "job"):
            for mode, env in modes.items():
                proc = subprocess.run(
                    [PY, "-m", "bench.cpu", "--child", path, "-n", str(args.n)],
                    cwd=ROOT,
                    env=dict(stack.base_env, **env),
                    capture_output=True,
                    text=True,
                    timeout=900,
                )
                if proc.returncode:
                    raise RuntimeError(f"{path}/{mode} failed:\n{proc.stderr[-3000:]}")
                result.setdefault(path, {})[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
                log(f"{path} ({mode}): {result[path][mode]['cpu_ms']} ms CPU each")
            result[path]["on_over_off"] = round(
                result[path]["on"]["cpu_ms"] / result[path]["off"]["cpu_ms"], 3
            )
        result["definition"] = {
            "off": "LOG_LEVEL=WARNING, no SENTRY_DSN",
            "on": "LOG_LEVEL=INFO (JSON lines to a pipe), SENTRY_DSN to a local sink",
        }
        print(json.dumps(result, indent=2))
        return 0
    finally:
        stack.close()
        sink.close()


if __name__ == "__main__":
    sys.exit(main())
