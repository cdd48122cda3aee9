"""Fixtures for the real stack: PostgreSQL (test database), Redis, a Celery worker
*process* (prefork), the API served over HTTP by pytest-django's live server."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent


def _subprocess_env(**extra) -> dict:
    env = dict(os.environ)
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        DJANGO_SETTINGS_MODULE="tests.settings",
        STOCKFLOW_USE_TEST_DATABASE="1",
        DATABASE_URL=os.environ["DATABASE_URL"],
        REDIS_URL=os.environ["REDIS_URL"],
        PYTHONPATH=str(ROOT),
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


class WorkerProcess:
    """A real `celery worker` (prefork) started as a subprocess of the test run."""

    def __init__(self, tmp_path: Path, concurrency: int = 2, name: str = "w1", **env):
        self.log_path = tmp_path / f"worker-{name}.log"
        self.name = name
        # bin/worker: the same entry point as the Procfile and compose.
        env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / f"prom-{name}"))
        env.setdefault("WORKER_METRICS_PORT", "0")
        self.proc = subprocess.Popen(
            [str(ROOT / "bin" / "worker")],
            cwd=ROOT,
            env=_subprocess_env(WORKER_NAME=name, WORKER_CONCURRENCY=concurrency, **env),
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()

    def _wait_ready(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()}")
            if "ready." in self.log():
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def child_pids(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True
        ).stdout
        return [int(p) for p in out.split()]

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class WebProcess:
    """bin/web (gunicorn) as a subprocess on the test database and broker."""

    def __init__(self, tmp_path: Path, name: str, **env):
        self.port = _free_port()
        self.log = tmp_path / f"web-{name}.log"
        self.proc = subprocess.Popen(
            [str(ROOT / "bin" / "web")],
            cwd=ROOT,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            env=_subprocess_env(
                PORT=self.port,
                WEB_CONCURRENCY=1,
                BIND_HOST="127.0.0.1",
                PROMETHEUS_MULTIPROC_DIR=str(tmp_path / f"prom-web-{name}"),
                METRICS_TOKEN="test-metrics-token",
                **env,
            ),
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(self.log.read_text())

    def stop(self):
        os.killpg(self.proc.pid, 15)
        self.proc.wait(timeout=20)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def broker():
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()  # the test broker db only: no leftovers from an earlier run
    yield client
    client.flushdb()


@pytest.fixture
def worker_factory(tmp_path, broker, transactional_db):
    started = []

    def start(**kwargs):
        w = WorkerProcess(tmp_path, name=f"w{len(started) + 1}", **kwargs)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


@pytest.fixture
def worker(worker_factory):
    return worker_factory()


class SharedWorker:
    """One real prefork worker for a whole test module (starting one per test costs ~3 s);
    a test may stop it, and the next one to ask gets a fresh worker."""

    def __init__(self, tmp_path, name):
        self.tmp_path, self.name, self.current, self.started = tmp_path, name, None, 0

    def get(self) -> WorkerProcess:
        if self.current is None or self.current.proc.poll() is not None:
            self.started += 1
            self.current = WorkerProcess(self.tmp_path, name=f"{self.name}{self.started}")
        return self.current

    def stop(self):
        if self.current is not None:
            self.current.stop()
            self.current = None


@pytest.fixture(scope="module")
def shared_worker(request, tmp_path_factory, broker, django_db_setup):
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "")
    shared = SharedWorker(tmp_path_factory.mktemp(f"{name}-workers"), name)
    yield shared
    shared.stop()


@pytest.fixture
def module_worker(shared_worker, transactional_db):
    """Use as `worker` in modules whose tests can share one worker process."""
    return shared_worker.get()


@pytest.fixture
def token(transactional_db):
    from stockflow.accounts.models import ApiToken

    return ApiToken.issue("tests")[1]


@pytest.fixture
def client(live_server, token):
    with httpx.Client(
        base_url=live_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as c:
        yield c


@pytest.fixture
def anon_client(live_server):
    with httpx.Client(base_url=live_server.url, timeout=30) as c:
        yield c


def wait_for_job(client: httpx.Client, job_id: str, timeout: float = 30) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not finished after {timeout}s: {job}")
