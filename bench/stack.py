"""The system under test, owned by the bench: embedded PostgreSQL and Redis in a private
temporary state dir, and web / worker / sync-web as subprocesses in their own sessions.

Only processes started here are ever signalled: app processes through their Popen
handles and the process groups they lead; the servers through `python -m harness.embedded
stop` for our state dir.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import unquote

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

# The caller's variables that would point the stack at other servers or metrics dirs.
_SCRUB = (
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "STOCKFLOW_USE_TEST_DATABASE",
    "STOCKFLOW_TEST_REDIS_DB",
    "PROMETHEUS_MULTIPROC_DIR",
    "WORKER_NAME",
    "WORKER_METRICS_PORT",
    "PORT",
    "SENTRY_DSN",
    "LOG_LEVEL",
    "DJANGO_SETTINGS_MODULE",
    "PYTEST_CURRENT_TEST",
    "PGAPPNAME",
    "WEB_CONCURRENCY",
    "WEB_THREADS",
    "WORKER_CONCURRENCY",
    "CELERY_WORKER_SEND_TASK_EVENTS",
    "DB_CONN_MAX_AGE",
    "STOCKFLOW_STATE_DIR",
    "SENTRY_ENVIRONMENT",
    "SENTRY_TRACES_SAMPLE_RATE",
    "METRICS_TOKEN",
)
_SCRUB_PREFIXES = ("OTEL_",)  # tracing is on only when the bench says so


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used by a process tree so far: each live process's own user+system plus
    what its reaped children used (children_user/system), so a child that exits between
    two readings (a PostgreSQL backend, a recycled pool child) is still counted."""
    total = 0.0
    try:
        main = psutil.Process(pid)
        procs = [main, *main.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            continue
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """One app process in its own session (its pid is its process group id)."""

    def __init__(self, name: str, argv: list[str], env: dict, log_path: Path):
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.popen: subprocess.Popen | None = None

    def start(self) -> Proc:
        with self.log_path.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tree(self) -> list[psutil.Process]:
        if not self.alive():
            return []
        try:
            main = psutil.Process(self.pid)
            return [main, *main.children(recursive=True)]
        except psutil.Error:
            return []

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def stop(self, timeout: float = 30) -> None:
        if not self.alive():
            return
        try:
            os.killpg(self.pid, signal.SIGTERM)
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait()
        except ProcessLookupError:
            pass
        # Stragglers still in *our* group (e.g. pool children), never anything else.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class MemorySampler(threading.Thread):
    """Peak RSS and PSS of each named process tree (main + children), sampled periodically.
    RSS summed over a forked tree counts shared pages once per process; PSS splits them."""

    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True)
        self.interval = interval
        self.procs: dict[str, Proc] = {}
        self.peak: dict[str, dict] = {}
        self._halt = threading.Event()

    def track(self, key: str, proc: Proc) -> None:
        self.procs[key] = proc

    def untrack(self, key: str) -> None:
        self.procs.pop(key, None)

    def sample(self) -> None:
        for key, proc in list(self.procs.items()):
            rss = pss = 0
            tree = proc.tree()
            for p in tree:
                try:
                    m = p.memory_full_info()
                    rss += m.rss
                    pss += getattr(m, "pss", m.rss)
                except psutil.Error:
                    continue
            if not tree:
                continue
            peak = self.peak.setdefault(key, {"rss_mb": 0.0, "pss_mb": 0.0, "processes": 0})
            peak["rss_mb"] = max(peak["rss_mb"], round(rss / 2**20, 1))
            peak["pss_mb"] = max(peak["pss_mb"], round(pss / 2**20, 1))
            peak["processes"] = max(peak["processes"], len(tree))

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._halt.set()


class Stack:
    def __init__(
        self,
        *,
        web_concurrency: int = 2,
        web_threads: int = 4,
        worker_concurrency: int = 2,
        keep_state: bool = False,
        worker_nice: int = 0,
    ):
        self.worker_nice = worker_nice
        # Short path: the PostgreSQL socket lives under <state>/pg (AF_UNIX paths are short).
        self.state = Path(tempfile.mkdtemp(prefix="sfbench.", dir="/tmp"))
        self.logs = self.state / "logs"
        self.logs.mkdir()
        self.keep_state = keep_state
        self.web_concurrency, self.web_threads, self.worker_concurrency = (
            web_concurrency,
            web_threads,
            worker_concurrency,
        )
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in _SCRUB and not k.startswith(_SCRUB_PREFIXES)
        }
        env.update(
            DJANGO_SETTINGS_MODULE="config.settings",
            STOCKFLOW_STATE_DIR=str(self.state),
            PATH=f"{Path(PY).parent}:{env.get('PATH', '')}",
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
        )
        self.base_env = env
        self.urls: dict[str, str] = {}
        self.procs: dict[str, Proc] = {}
        self.memory = MemorySampler()
        self.restarts = 0

    # --- servers ----------------------------------------------------------------------------

    def start_services(self) -> dict[str, str]:
        proc = subprocess.run(
            [PY, "-m", "harness.embedded", "start"],
            cwd=ROOT,
            env=self.base_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"harness.embedded start failed: {proc.stderr[-800:]}")
        for line in proc.stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep and key in ("DATABASE_URL", "REDIS_URL"):
                self.urls[key] = value
        port = (self.state / "redis" / "port").read_text().strip()
        # Ours, not the machine's: socket dir inside our state dir, our Redis's port.
        if str(self.state) not in unquote(self.urls.get("DATABASE_URL", "")) or not self.urls.get(
            "REDIS_URL", ""
        ).endswith(f":{port}/0"):
            raise RuntimeError(f"not the servers of {self.state}: {self.urls}")
        self.base_env.update(self.urls)
        return self.urls

    def pg_log(self) -> Path:
        return self.state / "pg" / "log"

    def _pidfile(self, path: Path, name: str) -> int | None:
        try:
            pid = int(path.read_text().split()[0])
            return pid if psutil.Process(pid).name() == name else None
        except (OSError, ValueError, IndexError, psutil.Error):
            return None

    def cpu_snapshot(self) -> dict[str, float]:
        """CPU seconds so far of each process tree we run, PostgreSQL and Redis included."""
        out = {
            name: tree_cpu_seconds(proc.pid) for name, proc in self.procs.items() if proc.alive()
        }
        for name, path, binary in (
            ("postgres", self.state / "pg" / "postmaster.pid", "postgres"),
            ("redis", self.state / "redis" / "redis.pid", "redis-server"),
        ):
            pid = self._pidfile(path, binary)
            if pid:
                out[name] = tree_cpu_seconds(pid)
        t = os.times()
        out["bench"] = t.user + t.system  # this process: load generator, polling
        return out

    def manage(self, *args: str, timeout: float = 600, **env) -> subprocess.CompletedProcess:
        return subprocess.run(
            [PY, str(ROOT / "manage.py"), *args],
            cwd=ROOT,
            env=dict(self.base_env, **env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def migrate(self) -> None:
        mig = self.manage("migrate", "--noinput")
        if mig.returncode:
            raise RuntimeError(f"migrate failed:\n{mig.stdout[-2000:]}\n{mig.stderr[-2000:]}")

    def api_token(self, name: str) -> str:
        """A new API token with every scope (`manage.py create_api_token`); the raw value."""
        tok = self.manage("create_api_token", name)
        if tok.returncode:
            raise RuntimeError(f"create_api_token failed: {tok.stderr[-1000:]}")
        return tok.stdout.strip().splitlines()[-1]

    # --- app processes ------------------------------------------------------------------------

    def start_web(
        self, name: str = "web", obs_env: dict | None = None, app: str | None = None
    ) -> tuple[Proc, str]:
        """bin/web (or, with `app`, the same gunicorn config serving another WSGI app)."""
        port = free_port()
        prom = self.state / "prom" / name
        env = dict(
            self.base_env,
            PORT=str(port),
            BIND_HOST="127.0.0.1",
            WEB_CONCURRENCY=str(self.web_concurrency),
            WEB_THREADS=str(self.web_threads),
            PROMETHEUS_MULTIPROC_DIR=str(prom),
            PGAPPNAME=f"stockflow-{name}",
        )
        env.update(obs_env or {})  # may override any of the above (lever experiments)
        if app:  # bin/web's two lines, for another app module
            shutil.rmtree(prom, ignore_errors=True)
            prom.mkdir(parents=True)
            argv = [str(Path(PY).parent / "gunicorn"), app, "--config", "python:config.gunicorn"]
        else:
            argv = [str(ROOT / "bin" / "web")]
        proc = Proc(name, argv, env, self.logs / f"{name}.log").start()
        url = f"http://127.0.0.1:{port}"
        self._wait_http(proc, url + "/healthz")
        self.procs[name] = proc
        self.memory.track(name, proc)
        return proc, url

    def start_worker(self, name: str = "worker", obs_env: dict | None = None) -> tuple[Proc, int]:
        metrics_port = free_port()
        env = dict(
            self.base_env,
            WORKER_NAME=name,
            WORKER_CONCURRENCY=str(self.worker_concurrency),
            WORKER_METRICS_PORT=str(metrics_port),
            PROMETHEUS_MULTIPROC_DIR=str(self.state / "prom" / name),
            PGAPPNAME=f"stockflow-{name}",
        )
        env.update(obs_env or {})
        argv = [str(ROOT / "bin" / "worker"), "-I", "bench.noop"]
        if self.worker_nice:
            argv = ["nice", "-n", str(self.worker_nice), *argv]
        proc = Proc(name, argv, env, self.logs / f"{name}.log").start()
        self._wait_http(
            proc, f"http://127.0.0.1:{metrics_port}/metrics"
        )  # served once the worker is ready
        self.procs[name] = proc
        self.memory.track(name, proc)
        return proc, metrics_port

    def stop_proc(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        self.memory.untrack(name)
        if proc:
            proc.stop()

    @staticmethod
    def _wait_http(proc: Proc, url: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{proc.name} not ready after {timeout}s ({url}):\n{proc.tail()}")

    # --- teardown -------------------------------------------------------------------------------

    def close(self, keep_logs: Path | None = None) -> dict:
        info: dict = {}
        self.memory.stop()
        for name in list(self.procs):
            try:
                self.stop_proc(name)
            except Exception as exc:  # keep tearing down
                info.setdefault("stop_errors", []).append(f"{name}: {exc}")
        if self.urls:
            env = {k: v for k, v in self.base_env.items() if k not in ("DATABASE_URL", "REDIS_URL")}
            proc = subprocess.run(
                [PY, "-m", "harness.embedded", "stop"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            if proc.returncode != 0:
                info["embedded_stop_error"] = proc.stderr[-300:]
        if keep_logs:
            keep_logs.mkdir(parents=True, exist_ok=True)
            for f in self.logs.glob("*.log"):
                shutil.copy2(f, keep_logs / f.name)
            if self.pg_log().exists():
                shutil.copy2(self.pg_log(), keep_logs / "postgres.log")
            info["logs"] = str(keep_logs)
        if self.keep_state:
            info["state_dir"] = str(self.state)
        else:
            shutil.rmtree(self.state, ignore_errors=True)
        return info
