"""Several hosts, really (issue P10 part 4): three network namespaces on a bridge
(harness/netns.py). Host A runs web (gunicorn) and beat (the reconciler), hosts B and C run
a prefork worker each; PostgreSQL (through PgBouncer in transaction mode, harness/pgbouncer.py)
and the broker (a private redis-server) listen on the bridge address of the root namespace.

A flash sale (demand above stock, four products, every sale paid through the API on host A)
is driven. While B is settling a batch (its session holds on-hand row locks: pg_locks, by
its application_name), B's interface goes down and its workers are kill -9'd: B vanishes
without a FIN or RST, as a machine losing power. Then, within a bound: every accepted job is
terminal and reported finished once, by one host; each sale paid at most once and exactly
as its job says (chaos/checks.py), no stock sold twice, beyond supply or from an expired lot;
`check_ledger` clean; the jobs B held (pgrowlocks) were settled by C, and host C, never
restarted, settled everything finished after the cut. One line, `MULTIHOST_SUMMARY {...}`,
says what happened.

Recovery needs PostgreSQL to end the transaction B left open: no FIN, no RST, so the server
never hears B is gone, and its server connection stays "idle in transaction" holding job and
on-hand row locks for as long as TCP takes to notice (hours). stockflow's own session
options end it (idle_in_transaction_session_timeout, DB_IDLE_IN_TRANSACTION_TIMEOUT_MS in
config/settings.py, the pools' connect_query behind PgBouncer): this test proves they do.

Skipped, saying why, where network namespaces cannot be built (not root, no CAP_NET_ADMIN).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
from django.conf import settings
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from chaos import checks
from chaos.stack import Proc as ChaosProc
from chaos.workload import Recorder
from harness import client as api
from harness import netns, processes
from harness.client import Client, Retry, days, line

pytestmark = pytest.mark.timeout(420)

DB_NAME = "stockflow_multihost"
SALES = 360
PRODUCTS = 4
SEED = 20261202
WEB_PORT = 8000  # inside host A's own namespace: no other run can hold it
# Leases and the reconciler as in the chaos run: recovery shows within the test's patience.
JOB_ENV = {
    "JOB_QUEUED_LEASE_SECONDS": "5",
    "JOB_RUNNING_LEASE_SECONDS": "10",
    "JOB_RECONCILE_INTERVAL_SECONDS": "2",
    # Messages B held unacked come back to C this soon (the reconciler re-sends anyway).
    "CELERY_VISIBILITY_TIMEOUT": "20",
    # Smaller batches: many transactions, so the cut finds B inside one.
    "JOB_BATCH_SIZE": "10",
}
DRAIN_TIMEOUT_S = 150
CUT_AFTER_TERMINAL = SALES // 5  # cut once this many jobs are done: B is well into the sale
MID_BATCH_TIMEOUT_S = 60


class Stack(processes.Stack):
    proc_class = ChaosProc  # kill9_group() and the sweep of orphaned pool children


def _bridge_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _conninfo(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**params)


def _url_with_db(url: str, dbname: str) -> str:
    base, _, rest = url.partition("://")
    hostpart, _, query = rest.partition("?")
    authority = hostpart.split("/", 1)[0]
    return f"{base}://{authority}/{dbname}" + (f"?{query}" if query else "")


@pytest.fixture
def net():
    reason = netns.probe()
    if reason:
        pytest.skip(f"network namespaces not permitted here: {reason}")
    try:
        with netns.network(("a", "b", "c")) as network:
            yield network
    except netns.NetnsUnavailable as exc:
        pytest.skip(f"network namespaces not permitted here: {exc}")


@pytest.fixture
def database():
    """stockflow_multihost on the suite's PostgreSQL server, created empty, dropped after.
    Yields (direct conninfo for checks, upstream URL for PgBouncer)."""
    # PostgreSQL itself, also when the suite runs behind a PgBouncer of its own.
    upstream = os.environ.get("DATABASE_DIRECT_URL") or os.environ["DATABASE_URL"]
    admin = _conninfo(upstream, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        # A crashed earlier run's copy goes first (its sessions too).
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    with psycopg.connect(_conninfo(upstream, DB_NAME), autocommit=True) as conn:
        # Which job rows B's lost transaction holds (contrib; superuser in the suite).
        conn.execute("CREATE EXTENSION IF NOT EXISTS pgrowlocks")
    yield _conninfo(upstream, DB_NAME), _url_with_db(upstream, DB_NAME)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")


@pytest.fixture
def bouncer(net, database):
    """PgBouncer (transaction pooling, harness/pgbouncer.py) on the bridge, in front of the
    suite's PostgreSQL, with the pools' session options of the settings the processes run."""
    from config import settings as app_settings
    from harness import pgbouncer

    _, upstream = database
    # Not under pytest's tmp_path: PgBouncer runs as `postgres`, which cannot enter root's
    # 0700 /tmp/pytest-of-root.
    workdir = Path(tempfile.mkdtemp(prefix="sfmh-pgb.", dir="/tmp"))
    pgb = pgbouncer.start(
        upstream,
        workdir,
        listen_host=net.gateway,
        listen_port=_bridge_port(net.gateway),
        databases=[DB_NAME],
        session_options=app_settings.DB_SESSION_OPTIONS_BY_ROLE,
    )
    try:
        yield pgb
    finally:
        pgb.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def stack(net, database, bouncer, tmp_path):
    broker_port = _bridge_port(net.gateway)
    redis_url = f"redis://{net.gateway}:{broker_port}/0"
    st = Stack(
        servers={"DATABASE_URL": bouncer.url_for(DB_NAME), "REDIS_URL": redis_url},
        state_dir=tmp_path / "state",
        env={
            "CELERY_BROKER_URL": redis_url,
            "DATABASE_POOLER": "pgbouncer",  # config/pooler.py: each role's PgBouncer alias
            **JOB_ENV,
        },
    )
    try:
        # The broker: a private redis-server on the bridge, nothing persisted.
        st.start(
            "redis",
            ["redis-server", "--bind", net.gateway, "--port", str(broker_port)]
            + ["--save", "", "--appendonly", "no", "--protected-mode", "no"],
        ).wait_log("Ready to accept connections", timeout=30)
        yield st
    finally:
        st.close(keep_logs=tmp_path / "logs")


def _json_lines(text: str):
    for raw in text.splitlines():
        if raw.startswith("{"):
            try:
                yield json.loads(raw)
            except ValueError:
                continue


def _transitions(proc: processes.Proc) -> Counter:
    """How often this worker reported each job finished (events.transition: once per job,
    logged after the COMMIT that settled it)."""
    return Counter(
        str(e["job_id"])
        for e in _json_lines(proc.log_text())
        if e.get("event") == "sale.transition" and e.get("job_id")
    )


def _settled_jobs(proc: processes.Proc) -> set[str]:
    return set(_transitions(proc))


def _in_transaction(conn, appname: str) -> int:
    """Server sessions inside a transaction for this application_name (PgBouncer passes the
    client's application_name on to the server connection it lends)."""
    return conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s "
        "AND xact_start IS NOT NULL",
        (DB_NAME, appname),
    ).fetchone()[0]


def _holding_stock(conn, appname: str) -> int:
    """Its transactions that hold on-hand rows locked: a batch being settled (locks.py takes
    jobs, then sales, then on-hand rows), not a claim, the reconciler or a read."""
    return conn.execute(
        "SELECT count(DISTINCT a.pid) FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
        "WHERE a.datname = %s AND a.application_name = %s AND a.xact_start IS NOT NULL "
        "AND l.granted AND l.relation = 'inventory_stockonhand'::regclass",
        (DB_NAME, appname),
    ).fetchone()[0]


def _held_jobs(conn, appname: str) -> set[str]:
    """Ids of the job rows locked by this application's open transactions (pgrowlocks)."""
    pids = [
        r[0]
        for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s "
            "AND xact_start IS NOT NULL",
            (DB_NAME, appname),
        ).fetchall()
    ]
    rows = conn.execute(
        "SELECT j.id FROM pgrowlocks('jobs_job') r JOIN jobs_job j ON j.ctid = r.locked_row "
        "WHERE r.pids && %s::int[]",
        (pids,),
    ).fetchall()
    return {str(r[0]) for r in rows}


def _status_counts(conn) -> dict[str, int]:
    return dict(conn.execute("SELECT status, count(*) FROM jobs_job GROUP BY status").fetchall())


def test_host_cut_off_mid_batch(net, database, stack, tmp_path):
    direct, upstream = database
    t_start = time.monotonic()
    # Schema changes straight to PostgreSQL, as a deployment runs them; the app goes through
    # PgBouncer.
    mig = stack.manage(
        "migrate", "--noinput", DATABASE_URL=upstream, DATABASE_POOLER="", timeout=300
    )
    assert mig.returncode == 0, f"migrate failed:\n{mig.stdout[-2000:]}\n{mig.stderr[-2000:]}"
    token = stack.api_token("multihost")

    a, b, c = (net.hosts[h] for h in "abc")
    web = stack.start(
        "web-a",
        net.exec_argv("a", [str(processes.BIN / "web")]),
        {
            "BIND_HOST": a.ip,
            "PORT": str(WEB_PORT),
            "WEB_CONCURRENCY": "2",
            "PGAPPNAME": "sf-web-a",
            "PROMETHEUS_MULTIPROC_DIR": str(stack.state / "prom" / "web-a"),
        },
        ready_url=f"http://{a.ip}:{WEB_PORT}/healthz",
        timeout=90,
    )
    workers = {}
    for host in (b, c):
        workers[host.name] = stack.start(
            f"worker-{host.name}",
            net.exec_argv(host.name, [str(processes.BIN / "worker")]),
            {
                "WORKER_NAME": f"mh-{host.name}",
                "WORKER_CONCURRENCY": "2",
                "WORKER_METRICS_PORT": "0",
                "PGAPPNAME": f"sf-worker-{host.name}",
                "PROMETHEUS_MULTIPROC_DIR": str(stack.state / "prom" / f"worker-{host.name}"),
            },
        )
    for proc in workers.values():
        proc.wait_log("ready.", timeout=90)
    beat = stack.start(
        "beat-a",
        net.exec_argv(
            "a", [str(processes.BIN / "beat"), "--schedule", str(stack.state / "beat-schedule")]
        ),
        {"PGAPPNAME": "sf-beat-a"},
    )
    c_pid = workers["c"].pid

    # --- the flash sale: a few products, 80 % of the demand in stock ------------------------
    rng = random.Random(SEED)
    url = f"http://{a.ip}:{WEB_PORT}"
    http = Client(url, token, timeout=30, retry=Retry(give_up_s=60))
    skus = [f"MH-{i}" for i in range(PRODUCTS)]
    orders = []
    for _ in range(SALES):
        picked = rng.sample(skus, rng.choice((1, 1, 2)))
        orders.append([(sku, rng.randint(1, 3)) for sku in picked])
    demand = Counter()
    for order in orders:
        for sku, q in order:
            demand[sku] += q
    supply = {}
    for sku in skus:
        good = int(demand[sku] * 0.8)
        supply[sku] = good
        assert api.product(http, sku, f"Flash {sku}").status_code == 201
        lots = [("EXP", -2, 7), ("A", 10, good // 3), ("B", 40, good // 3)]
        lots.append(("C", None, good - 2 * (good // 3)))
        for lot, exp, qty in lots:
            resp = api.receipt(http, sku, lot, qty, days(exp) if exp is not None else None)
            assert resp.status_code == 201, resp.text

    def create(i: int) -> tuple[int, str]:
        lines = [line(sku, q) for sku, q in orders[i]]
        resp, _ = http.call(
            "POST",
            "/api/sales",
            json={"number": f"MH-S{i:05d}", "location": "MAIN", "lines": lines},
        )
        assert resp is not None and resp.status_code == 201, resp and resp.text
        return resp.json()["id"], f"MH-S{i:05d}"

    with ThreadPoolExecutor(8) as pool:
        sales = list(pool.map(create, range(SALES)))

    rec = Recorder()
    refused: list[str] = []
    submitted = threading.Event()

    def pay(item: tuple[int, str]) -> None:
        sale_id, number = item
        key = f"pay-{number}"
        resp, _ = http.call(
            "POST",
            f"/api/sales/{sale_id}/transition",
            json={"to_status": "paid"},
            headers={"Idempotency-Key": key},
        )
        if resp is None or resp.status_code != 202:
            refused.append(f"{sale_id}: {resp.status_code if resp else 'no answer'}")
            return
        rec.accept("pay", sale_id, key, resp.json()["job"]["id"])

    def submit_all() -> None:
        # Paced over ~10 s, so the cut lands while jobs are still arriving and C has to
        # carry on with work that B never saw.
        with ThreadPoolExecutor(4) as pool:
            for i, item in enumerate(sales):
                pool.submit(pay, item)
                if i % 4 == 3:
                    time.sleep(0.11)
        submitted.set()

    monitor = psycopg.connect(direct, autocommit=True)
    submitter = threading.Thread(target=submit_all, daemon=True)
    t_pay = time.monotonic()
    submitter.start()

    # --- the cut: B inside a batch transaction, after it settled some jobs ----------------
    # Seen holding on-hand rows, then cut; if that batch still committed before the link
    # went down (nothing of B's left open), the link comes back and the next batch is tried.
    deadline = time.monotonic() + MID_BATCH_TIMEOUT_S
    terminal, tries, b_started, zombie = 0, 0, False, 0
    while time.monotonic() < deadline:
        if terminal < CUT_AFTER_TERMINAL or not b_started:
            counts = _status_counts(monitor)
            terminal = counts.get("succeeded", 0) + counts.get("failed", 0)
            b_started = bool(_settled_jobs(workers["b"]))
            time.sleep(0.05)
            continue
        if not _holding_stock(monitor, "sf-worker-b"):
            time.sleep(0.002)
            continue
        net.cut("b")
        tries += 1
        t_cut, t_cut_wall = time.monotonic(), time.time()
        time.sleep(0.2)  # whatever B had already sent lands; the rest never comes
        if zombie := _holding_stock(monitor, "sf-worker-b"):
            break
        net.restore("b")
    assert zombie, (
        f"host B never cut off inside a batch transaction within {MID_BATCH_TIMEOUT_S}s "
        f"({tries} cuts, {terminal} jobs terminal, B settled "
        f"{len(_settled_jobs(workers['b']))} jobs):\n{workers['b'].tail()}"
    )
    b_held = _held_jobs(monitor, "sf-worker-b")  # the batch B was settling when it vanished
    status_at_cut = _status_counts(monitor)
    # Claimed (committed `running`) at the cut: among them the one B was settling.
    running_at_cut = {
        str(r[0])
        for r in monitor.execute("SELECT id FROM jobs_job WHERE status = 'running'").fetchall()
    }
    b_before = _settled_jobs(workers["b"])
    c_before = _settled_jobs(workers["c"])
    time.sleep(0.3)  # B's processes are stuck on the dead link, mid-batch
    b_tree = [p.pid for p in workers["b"].tree()]
    workers["b"].kill9_group()
    b_xact_after_kill = _in_transaction(monitor, "sf-worker-b")

    # --- recovery: every job terminal, bounded -------------------------------------------
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    b_xact_gone_s = held_done_s = None
    while True:
        counts = _status_counts(monitor)
        now = round(time.monotonic() - t_cut, 1)
        if b_xact_gone_s is None and not _in_transaction(monitor, "sf-worker-b"):
            b_xact_gone_s = now
        if held_done_s is None:
            left = monitor.execute(
                "SELECT count(*) FROM jobs_job "
                "WHERE id = ANY(%s) AND status IN ('queued', 'running')",
                ([uuid.UUID(j) for j in b_held | running_at_cut],),
            ).fetchone()[0]
            held_done_s = now if not left else None
        unfinished = counts.get("queued", 0) + counts.get("running", 0)
        if (submitted.is_set() and not unfinished) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    t_drained = time.monotonic()
    assert submitted.is_set(), f"the PAID submissions did not finish in {DRAIN_TIMEOUT_S}s"
    assert not refused, f"PAID refused or unanswered: {refused[:10]}"
    assert len(rec.accepted) == SALES
    time.sleep(0.5)  # the last events are logged just after their COMMIT

    # --- verdict -----------------------------------------------------------------------------
    verdict = checks.verify(direct, rec, SimpleNamespace(refund_amounts={}))
    ledger = checks.check_ledger(stack)
    finished_after_cut = {
        str(r[0])
        for r in monitor.execute(
            "SELECT id FROM jobs_job WHERE finished_at > to_timestamp(%s)", (t_cut_wall,)
        ).fetchall()
    }
    b_seen, c_seen = _transitions(workers["b"]), _transitions(workers["c"])
    b_all, c_all = set(b_seen), set(c_seen)
    twice = [j for j, n in (b_seen + c_seen).items() if n > 1]
    redelivered = monitor.execute("SELECT count(*) FROM jobs_job WHERE attempts > 1").fetchone()[0]
    monitor.close()
    consumed, expired_sold = Counter(), 0
    with psycopg.connect(direct, autocommit=True) as conn:
        for sku, lot, q in conn.execute(
            "SELECT p.sku, bt.lot, -SUM(m.quantity) FROM inventory_stockmove m "
            "JOIN inventory_batch bt ON bt.id = m.batch_id JOIN inventory_product p "
            "ON p.id = bt.product_id WHERE m.kind = 'SALE_OUT' GROUP BY p.sku, bt.lot"
        ).fetchall():
            consumed[sku] += int(q)
            expired_sold += int(q) if lot == "EXP" else 0
    summary = {
        "hosts": {h.name: h.ip for h in net.hosts.values()},
        "broker_and_db_on": net.gateway,
        "idle_in_transaction_session_timeout_ms": settings.DB_IDLE_IN_TRANSACTION_TIMEOUT_MS,
        "sales": SALES,
        "jobs": verdict["jobs"]["by_kind_status"],
        "failed_by_code": verdict["jobs"]["failed_by_code"],
        "attempts_histogram": verdict["jobs"]["attempts_histogram"],
        "status_at_cut": status_at_cut,
        "cut_after_s": round(t_cut - t_pay, 1),
        "cuts_tried": tries,
        "b_batches_open_at_cut": zombie,
        "b_transactions_open_after_kill": b_xact_after_kill,
        "b_transaction_gone_after_s": b_xact_gone_s,
        "b_processes_killed": len(b_tree),
        "settled_before_cut": {"b": len(b_before), "c": len(c_before)},
        "settled_total": {"b": len(b_all), "c": len(c_all)},
        "finished_after_cut": len(finished_after_cut),
        "finished_after_cut_by": {
            "c": len(finished_after_cut & c_all),
            "b": len(finished_after_cut & b_all),
            "unattributed": len(finished_after_cut - c_all - b_all),
        },
        "b_held_jobs": len(b_held),
        "b_held_jobs_finished_by_c": len(b_held & c_all),
        "running_at_cut": len(running_at_cut),
        "held_and_running_terminal_after_s": held_done_s,
        "jobs_redelivered": redelivered,
        "jobs_reported_finished_twice": len(twice),
        "all_terminal_after_cut_s": round(t_drained - t_cut, 1),
        "consumed_vs_supply": {s: [consumed[s], supply[s]] for s in skus},
        "expired_lot_sold": expired_sold,
        "checks": verdict["checks"],
        "ledger_clean": ledger.get("clean"),
        "duration_s": round(time.monotonic() - t_start, 1),
    }
    print("MULTIHOST_SUMMARY " + json.dumps(summary, sort_keys=True), flush=True)
    brief = json.dumps(summary, indent=1)

    assert not unfinished, f"jobs unfinished {DRAIN_TIMEOUT_S}s after the cut:\n{brief}"
    assert all(v == "ok" for v in verdict["checks"].values()), (
        f"{brief}\n{json.dumps(rec.violations, indent=1, default=str)[:6000]}"
    )
    assert ledger.get("clean") and ledger.get("exit_code") == 0, json.dumps(ledger)[:4000]
    # Every job ended once: one terminal row each, for the sales the client paid.
    assert sum(counts.values()) == SALES == verdict["jobs"]["in_database"], brief
    # No stock consumed twice or beyond what was received (flash sale: demand > supply).
    assert all(consumed[s] <= supply[s] for s in skus) and not expired_sold, brief
    # The cut was mid-work: B had settled jobs, and C's share came after it.
    assert b_before and finished_after_cut, brief
    # Host C carried on: the same process throughout, and the jobs finished after the cut
    # are C's (B's processes were dead, A runs no worker).
    assert workers["c"].alive() and workers["c"].pid == c_pid, workers["c"].tail()
    assert finished_after_cut <= c_all, brief
    assert not (finished_after_cut & b_all), brief
    assert web.alive() and beat.alive(), f"{web.tail()}\n{beat.tail()}"
    # Each job reported finished once, by one host: its effects applied exactly once.
    assert not twice, f"jobs reported finished more than once: {twice[:10]}\n{brief}"
    # B vanished holding a batch (job rows locked, on-hand rows too): once PostgreSQL ended
    # that transaction, those jobs were queued again and C settled every one of them.
    assert b_held and b_held <= c_all and b_xact_after_kill, brief
    assert not net.link_up("b")
