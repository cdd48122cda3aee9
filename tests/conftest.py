"""Fixtures for the real stack: PostgreSQL (test database), Redis, Celery worker *processes*
(prefork) and web processes from harness.processes, the API served over HTTP by
pytest-django's live server and called through harness.client."""

import os
import subprocess
from pathlib import Path

import pytest
import redis
from django.conf import settings

from harness.client import Client
from harness.processes import BIN, ROOT, Stack


def stack(tmp_path: Path) -> Stack:
    """Processes on the suite's servers, its test database and Redis db; logs in tmp_path."""
    return Stack(
        servers={"DATABASE_URL": os.environ["DATABASE_URL"], "REDIS_URL": os.environ["REDIS_URL"]},
        state_dir=tmp_path,
        logs_dir=tmp_path,
        env={
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "STOCKFLOW_USE_TEST_DATABASE": "1",
            "STOCKFLOW_TEST_REDIS_DB": str(settings.TEST_REDIS_DB),
        },
        web_concurrency=1,
    )


def _strings(env: dict) -> dict[str, str]:
    return {k: str(v) for k, v in env.items()}


class WorkerProcess:
    """A real `celery worker` (bin/worker, prefork) on the test database and broker."""

    def __init__(self, tmp_path: Path, concurrency: int = 2, name: str = "w1", **env):
        self.name = name
        env = {
            "WORKER_CONCURRENCY": concurrency,
            "PROMETHEUS_MULTIPROC_DIR": tmp_path / f"prom-{name}",
            **env,
        }
        self.proc = stack(tmp_path).start_worker(
            name, _strings(env), timeout=30, log_name=f"worker-{name}"
        )

    def log(self) -> str:
        return self.proc.log_text()

    def child_pids(self) -> list[int]:
        return self.proc.children()

    def stop(self):
        self.proc.stop(timeout=20)


class WebProcess:
    """bin/web (gunicorn) on the test database and broker."""

    def __init__(self, tmp_path: Path, name: str, **env):
        env = {
            "PROMETHEUS_MULTIPROC_DIR": tmp_path / f"prom-web-{name}",
            "METRICS_TOKEN": "test-metrics-token",
            **env,
        }
        self.proc = stack(tmp_path).start_web(f"web-{name}", _strings(env), timeout=30)
        self.url, self.port, self.log = self.proc.url, self.proc.port, self.proc.log_path

    def stop(self):
        self.proc.stop(timeout=20)


def script_env(**extra) -> dict[str, str]:
    """What a bin/ script needs on top of the suite's environment: the test broker (bin/flower
    gets it from tests.settings, bin/celery-exporter from CELERY_BROKER_URL)."""
    return _strings({"CELERY_BROKER_URL": settings.CELERY_BROKER_URL, **extra})


class ScriptProcess:
    """One of the bin/ scripts (flower, celery-exporter), not waited for."""

    def __init__(self, tmp_path: Path, name: str, argv: list[str], env: dict):
        self.proc = stack(tmp_path).start(name, argv, env)

    def log(self) -> str:
        return self.proc.log_text()

    def check_alive(self):
        if not self.proc.alive():
            raise AssertionError(
                f"{self.proc.argv[0]} exited with {self.proc.returncode()}:\n{self.log()}"
            )

    def stop(self):
        self.proc.stop(timeout=15)


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
        if self.current is None or not self.current.proc.alive():
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


@pytest.fixture(scope="session")
def exporter_venv(tmp_path_factory):
    """Build .venv-exporter the way every start does: by running bin/celery-exporter
    (`--install` stops once the venv is in place). A cold build takes ~15-60 s."""
    script = str(BIN / "celery-exporter")
    env = dict(stack(tmp_path_factory.mktemp("exporter-venv")).base_env, **script_env())
    out = subprocess.run(
        [script, "--install"],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    # The venv runs the real exporter: its CLI lists the metrics the test reads.
    out = subprocess.run(
        [script, "--help"],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    assert "celery_task_succeeded_total" in out.stdout, out.stdout
    return ROOT / ".venv-exporter"


@pytest.fixture
def token(transactional_db):
    from stockflow.accounts.models import ApiToken

    return ApiToken.issue("tests")[1]


@pytest.fixture
def client(live_server, token):
    with Client(live_server.url, token, timeout=30) as c:
        yield c


@pytest.fixture
def anon_client(live_server):
    with Client(live_server.url, timeout=30) as c:
        yield c
