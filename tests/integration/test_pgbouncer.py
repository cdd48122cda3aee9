"""stockflow behind a real PgBouncer (Debian's, harness/pgbouncer.py) in transaction pooling
mode: each process role keeps its own timeouts (its alias's pool, config/pooler.py), no
server-side prepared statement outlives the transaction that needs it, and a job goes from
a gunicorn web process through a prefork worker to `succeeded` with every connection pooled.

The expected session of a role is what a *direct* connection gets from the role's libpq
`options` (config/settings.py DB_SESSION_OPTIONS_BY_ROLE); through PgBouncer it must be the
same, set by the pool's connect_query instead."""

import json
import os
import subprocess
import sys

import httpx
import psycopg
import pytest
from django.conf import settings
from django.db import connection

from harness import pgbouncer
from harness.client import Client
from harness.processes import ROOT, Stack, free_port
from stockflow.stock.models import Product
from tests.api_helpers import pay, product, receive, sale, wait_for_job, wait_until
from tests.pgbouncer_probe import PROBE_PATH, SETTINGS, TASK

pytestmark = pytest.mark.skipif(
    not os.path.exists(pgbouncer.BINARY), reason=f"no pgbouncer at {pgbouncer.BINARY}"
)


def suite_database() -> str:
    return connection.settings_dict["NAME"]  # the suite's own role, web: the database's name


def expected_session(role: str) -> dict:
    """What a direct connection with the role's libpq options runs with."""
    url = pgbouncer.Upstream.parse(pgbouncer.direct_database_url()).url(suite_database())
    with psycopg.connect(url, options=settings.DB_SESSION_OPTIONS_BY_ROLE[role]) as conn:
        return {
            name: conn.execute("SELECT current_setting(%s, true)", [name]).fetchone()[0]
            for name in SETTINGS
        }


def start_bouncer(tmp_path, **kwargs) -> pgbouncer.PgBouncer:
    return pgbouncer.start(
        pgbouncer.direct_database_url(),
        tmp_path,
        listen_port=free_port(),
        session_options=settings.DB_SESSION_OPTIONS_BY_ROLE,
        **kwargs,
    )


def process_env(bouncer) -> dict[str, str]:
    return {
        **bouncer.env(),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "STOCKFLOW_USE_TEST_DATABASE": "1",
        "STOCKFLOW_TEST_REDIS_DB": str(settings.TEST_REDIS_DB),
    }


class Behind:
    """PgBouncer, a gunicorn web process (stockflow + the probe) and a prefork worker behind it."""

    def __init__(self, tmp_path):
        self.bouncer = start_bouncer(tmp_path / "pgbouncer")
        env = process_env(self.bouncer)
        self.stack = Stack(
            servers={"DATABASE_URL": env["DATABASE_URL"], "REDIS_URL": os.environ["REDIS_URL"]},
            state_dir=tmp_path,
            env=env,
            web_concurrency=1,
        )
        self.web = self.stack.start_web(
            "web", {"METRICS_TOKEN": "test-metrics-token"}, app="tests.pgbouncer_probe:application"
        )
        self.worker = self.stack.start_worker(
            "pgb", {"WORKER_CONCURRENCY": "2"}, args=("--include", "tests.pgbouncer_probe")
        )

    def close(self):
        self.stack.close()
        self.bouncer.stop()

    def queries_by_alias(self) -> dict[str, int]:
        rows = self.bouncer.admin("SHOW STATS")
        return {
            row[0]: int(row[2]) for row in rows
        }  # database, total_xact_count, total_query_count


@pytest.fixture(scope="module")
def behind(tmp_path_factory, broker, django_db_setup):
    stack = Behind(tmp_path_factory.mktemp("pgbouncer"))
    yield stack
    stack.close()


def through(behind, session: dict, role: str) -> None:
    """The session came through this PgBouncer, on the role's alias."""
    assert session["connects_to"]["PORT"] in (
        behind.bouncer.listen_port,
        str(behind.bouncer.listen_port),
    )
    assert session["connects_to"]["NAME"] == pgbouncer.pooler.alias(suite_database(), role)
    assert session["database"] == suite_database()


def test_each_role_keeps_its_timeouts_through_pgbouncer(behind, transactional_db, tmp_path):
    web = httpx.get(behind.web.url + PROBE_PATH, timeout=30).json()
    through(behind, web, "web")
    assert {k: web[k] for k in SETTINGS} == expected_session("web")

    out = tmp_path / "worker-session.json"
    from workers.celery import app

    app.send_task(TASK, args=[str(out)], queue=settings.CELERY_TASK_DEFAULT_QUEUE)
    wait_until(out.exists, 30, "the worker's probe task")
    worker = json.loads(out.read_text())
    through(behind, worker, "worker")
    assert {k: worker[k] for k in SETTINGS} == expected_session("worker")
    # The roles really differ: one pool's settings did not leak into the other's.
    assert worker["lock_timeout"] != web["lock_timeout"]
    assert worker["statement_timeout"] != web["statement_timeout"]


def test_pgbouncer_refuses_libpq_options_it_cannot_pool(behind):
    """Why the timeouts are the pool's: PgBouncer 1.18 in transaction mode refuses the
    startup parameter a direct connection carries them in (loudly, not silently)."""
    with pytest.raises(psycopg.OperationalError, match="unsupported startup parameter: options"):
        psycopg.connect(behind.bouncer.url, options="-c lock_timeout=1", connect_timeout=5)


def test_a_job_completes_with_every_connection_through_pgbouncer(behind, token):
    before = behind.queries_by_alias()
    with Client(behind.web.url, token, timeout=30) as client:
        product(client, "PGB-1")
        receive(client, "PGB-1", "L1", 10, 30)
        paid = sale(client, "S-PGB-1", [("PGB-1", 3)])
        job = wait_for_job(client, pay(client, paid["id"])["id"])
    assert job["status"] == "succeeded", job
    after = behind.queries_by_alias()
    db = suite_database()
    for alias in (db, pgbouncer.pooler.alias(db, "worker")):
        assert after.get(alias, 0) > before.get(alias, 0), (alias, before, after)


# A Django process behind PgBouncer with one server connection for every client: its
# threads' statements interleave on that connection. Each runs the same statements over and
# over (with server-side binding psycopg prepares them from the 5th run on) through the
# ORM, a raw cursor and an .iterator() (a WITH HOLD server-side cursor unless disabled).
INTERLEAVE = """
import sys, threading, django
django.setup()
from django.conf import settings
from django.db import connection
options = settings.DATABASES["default"]["OPTIONS"]
if sys.argv[1] == "server-side-binding":
    options["server_side_binding"] = True
if sys.argv[2] != "settings":
    options["prepare_threshold"] = int(sys.argv[2])
from stockflow.stock.models import Product
errors, barrier = [], threading.Barrier(4)
def run():
    try:
        barrier.wait()
        for i in range(30):
            Product.objects.filter(sku=f"none-{i}").exists()
            with connection.cursor() as cursor:
                cursor.execute("SELECT %s::int + 1", [i])
            list(Product.objects.all().iterator(chunk_size=2))
    except Exception as exc:
        errors.append(repr(exc))
    finally:
        connection.close()
threads = [threading.Thread(target=run) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print("\\n".join(errors) or "ok")
"""


def interleave(bouncer, binding: str, threshold: str) -> str:
    env = {**os.environ, **process_env(bouncer), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", INTERLEAVE, binding, threshold],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def test_no_server_side_prepared_statements_through_one_shared_server_connection(
    tmp_path, transactional_db
):
    bouncer = start_bouncer(tmp_path, default_pool_size=1)
    try:
        for sku in ("PGB-A", "PGB-B", "PGB-C"):
            Product.objects.create(sku=sku, name=sku)
        # Control: psycopg preparing (server-side binding; Django's default client-side
        # binding never prepares), clients collide on the one server connection.
        assert "prepared statement" in interleave(bouncer, "server-side-binding", "0")
        assert interleave(bouncer, "settings", "settings") == "ok"
        # prepare_threshold None holds even if someone turns server-side binding on.
        assert interleave(bouncer, "server-side-binding", "settings") == "ok"
    finally:
        bouncer.stop()
