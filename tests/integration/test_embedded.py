"""Tests for harness/embedded.py: embedded PostgreSQL + Redis shared by all processes.

Each test uses its own short state dir under /tmp (AF_UNIX socket paths are limited to
~107 bytes) and never touches the machine's PostgreSQL (5432) or Redis (6379). Every
server started here is stopped in a fixture finalizer.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # api/ may be a namespace package (no __init__.py yet)
    sys.path.insert(0, str(REPO))

from harness import embedded  # noqa: E402

KEYS = ("DATABASE_URL", "REDIS_URL")

# Child process: report the URLs it got and which heavy modules it had to import.
CHILD = """
import json, sys
from harness.embedded import ensure_services
urls = ensure_services(sys.argv[1])
mods = [m for m in ("pgserver", "psutil", "psycopg") if m in sys.modules]
print(json.dumps({"urls": urls, "mods": mods}))
"""

DJANGO_CHILD = """
import sys, django, dj_database_url
from django.conf import settings
settings.configure(DATABASES={"default": dj_database_url.parse(sys.argv[1])})
django.setup()
from django.db import connection
with connection.cursor() as cur:
    cur.execute("select current_database()")
    print(cur.fetchone()[0])
"""


def child_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in KEYS + ("STOCKFLOW_STATE_DIR",)}
    env["PYTHONPATH"] = str(REPO)
    return {**env, **extra}


def run_child(state, **extra_env):
    # capture_output also proves the daemons don't keep our stdout/stderr pipes open
    # (run() would block until they exit otherwise).
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(state)],
        env=child_env(**extra_env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


def servers(state):
    """(postmasters, redis-servers) running for this state dir."""
    pgdata, rdir = str(Path(state, "pg")), str(Path(state, "redis"))
    pg = redis = 0
    for p in psutil.process_iter(["name", "cmdline", "cwd"]):
        if p.info["name"] == "postgres" and pgdata in (p.info["cmdline"] or []):
            pg += 1  # only the postmaster keeps "-D <pgdata>" in its command line
        elif p.info["name"] == "redis-server" and p.info["cwd"] == rdir:
            redis += 1
    return pg, redis


def new_state_dir(prefix="sfTest"):
    # Short path; upper-case letters on purpose (the URL host must keep them).
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def cleanup(state):
    embedded.stop_services(state)
    assert servers(state) == (0, 0)
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def no_urls():
    # patch.dict restores os.environ afterwards, including the URLs ensure_services() exports
    # (monkeypatch.delenv on an absent key records nothing, so those would leak).
    with mock.patch.dict(os.environ):
        for key in KEYS + ("STOCKFLOW_STATE_DIR",):
            os.environ.pop(key, None)
        yield


@pytest.fixture(scope="module")
def state():
    path = new_state_dir()
    yield path
    cleanup(path)


@pytest.fixture(scope="module")
def urls(state):
    with mock.patch.dict(os.environ):
        for key in KEYS:
            os.environ.pop(key, None)
        result = embedded.ensure_services(state)
        assert {k: os.environ[k] for k in KEYS} == result
    return result


def test_cold_start_gives_working_urls(urls, state):
    import psycopg
    import redis

    assert re.fullmatch(r"postgresql://postgres@[^/]+:\d+/stockflow", urls["DATABASE_URL"])
    assert re.fullmatch(r"redis://127\.0\.0\.1:\d+/0", urls["REDIS_URL"])
    assert not urls["REDIS_URL"].endswith(":6379/0")
    with psycopg.connect(urls["DATABASE_URL"]) as conn:
        assert conn.execute("select 1, current_database()").fetchone() == (1, "stockflow")
        assert conn.info.host == str(state / "pg")  # socket dir, no TCP
    assert redis.Redis.from_url(urls["REDIS_URL"]).ping()
    assert servers(state) == (1, 1)


def test_django_database_entry(urls, state):
    import dj_database_url

    cfg = dj_database_url.parse(urls["DATABASE_URL"])
    assert cfg["ENGINE"] == "django.db.backends.postgresql"
    assert (cfg["HOST"], cfg["NAME"], cfg["USER"]) == (str(state / "pg"), "stockflow", "postgres")
    out = subprocess.run(
        [sys.executable, "-c", DJANGO_CHILD, urls["DATABASE_URL"]],
        env=child_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "stockflow"


def test_reuse_in_process_exports_env(no_urls, urls, state, capfd):
    assert embedded.ensure_services(state) == urls
    assert {k: os.environ[k] for k in KEYS} == urls
    assert "started" not in capfd.readouterr().err


def test_reuse_from_subprocess(urls, state):
    result, stderr = run_child(state)
    assert result["urls"] == urls
    assert "pgserver" not in result["mods"]  # reuse never imports pgserver
    assert "started" not in stderr
    assert servers(state) == (1, 1)


def test_status(urls, state):
    assert embedded.service_status(state) == urls


def test_concurrent_cold_start():
    state = new_state_dir()
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, str(state)],
                env=child_env(),
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        outs = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        results = [json.loads(out)["urls"] for out, _ in outs]
        assert results[0] == results[1] == results[2]
        stderr = "".join(err for _, err in outs)
        assert stderr.count("started embedded PostgreSQL") == 1
        assert stderr.count("started embedded Redis") == 1
        assert servers(state) == (1, 1)
    finally:
        cleanup(state)


def test_long_state_dir_uses_short_socket_dir(no_urls):
    import dj_database_url
    import psycopg

    base = new_state_dir()
    state = base / ("Long_State_Dir_" * 7)  # PGDATA socket path would exceed ~107 bytes
    host = None
    try:
        urls = embedded.ensure_services(state)
        host = dj_database_url.parse(urls["DATABASE_URL"])["HOST"]
        assert not host.startswith(str(state)) and len(host) < 90
        with psycopg.connect(urls["DATABASE_URL"]) as conn:
            assert conn.execute("select current_database()").fetchone() == ("stockflow",)
        # a second process finds the same socket dir (recorded in postmaster.pid)
        assert run_child(state)[0]["urls"] == urls
    finally:
        cleanup(state)
        shutil.rmtree(base, ignore_errors=True)
        if host:  # pgserver's per-PGDATA socket dir, empty once the server is stopped
            shutil.rmtree(host, ignore_errors=True)


def test_urls_set_starts_nothing(tmp_path):
    state = tmp_path / "never-created"
    env = {"DATABASE_URL": "postgresql://u@db.example/x", "REDIS_URL": "redis://cache.example:1/0"}
    result, stderr = run_child(state, **env)
    assert result["urls"] == env
    assert result["mods"] == []  # fast path: not even psutil
    assert not state.exists() and stderr == ""


def test_redis_restarts_after_crash_on_same_port(no_urls, urls, state, capfd):
    import redis

    os.kill(embedded._read_int(state / "redis" / "redis.pid"), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while servers(state)[1] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert embedded.service_status(state)["REDIS_URL"] is None

    assert embedded.ensure_services(state) == urls  # the recorded port was free again
    assert capfd.readouterr().err.count("started embedded Redis") == 1
    assert redis.Redis.from_url(urls["REDIS_URL"]).ping()
    assert servers(state) == (1, 1)


def test_stop_then_start_again(no_urls, urls, state):
    # last test using the module servers; the fixture finalizer stops the restarted ones
    embedded.stop_services(state)
    assert servers(state) == (0, 0)
    assert embedded.service_status(state) == {"DATABASE_URL": None, "REDIS_URL": None}
    embedded.stop_services(state)  # idempotent

    assert embedded.ensure_services(state) == urls  # same socket dir, preferred port reused
    assert servers(state) == (1, 1)
