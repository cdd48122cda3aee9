"""One launcher for stockflow's processes: web (bin/web), worker (bin/worker), beat
(bin/beat) and any other script (flower, celery-exporter, prometheus), on given servers
(DATABASE_URL / REDIS_URL) or on embedded PostgreSQL and Redis in a state dir of its own.

bench, chaos, monitoring/integration.py and the tests start their processes here. Only
processes started here are ever signalled: app processes through their Popen handles and
the process groups they lead (each runs in its own session); the embedded servers through
`python -m harness.embedded` for our state dir, or by the pid files there, checked by name
and command line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BIN = ROOT / "bin"
KEYS = ("DATABASE_URL", "REDIS_URL")

# The caller's variables that would point a process at other servers, settings, metrics
# dirs or error/trace sinks, or size it: a Stack starts without them and sets what it wants.
SCRUB = (
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
    "WORKER_QUEUES",  # bin/worker's default: the job queue and the periodic queue
    "CELERY_WORKER_SEND_TASK_EVENTS",
    "DB_CONN_MAX_AGE",
    "STOCKFLOW_STATE_DIR",
    "SENTRY_ENVIRONMENT",
    "SENTRY_TRACES_SAMPLE_RATE",
    "METRICS_TOKEN",
)
SCRUB_PREFIXES = ("OTEL_",)  # tracing is on only when the caller's env says so


def logger(tag: str) -> Callable[[str], None]:
    """A progress printer for stderr: `[tag HH:MM:SS] message` (stdout is for results)."""

    def log(msg: str) -> None:
        print(f"[{tag} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    return log


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrubbed_env() -> dict[str, str]:
    return {
        k: v for k, v in os.environ.items() if k not in SCRUB and not k.startswith(SCRUB_PREFIXES)
    }


class Proc:
    """One process in its own session: its pid is its process group id, which its children
    (gunicorn workers, pool children) share. start() again after it exited restarts it; its
    output is appended to the same log file."""

    def __init__(self, name: str, argv: list[str], env: dict, log_path: Path):
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.popen: subprocess.Popen | None = None
        self.log_offset = 0  # where the current start's output begins in the log
        self.started_at = 0.0
        self.url, self.port = "", 0  # set for processes that serve HTTP
        self.metrics_url, self.metrics_port = "", 0  # set for workers that serve /metrics

    def start(self) -> Proc:
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
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
        self.started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def tree(self) -> list[psutil.Process]:
        if not self.alive():
            return []
        try:
            main = psutil.Process(self.pid)
            return [main, *main.children(recursive=True)]
        except psutil.Error:
            return []

    def children(self) -> list[int]:
        """Pids of the live (not zombie) direct children."""
        out = []
        for child in self.tree()[1:]:
            try:
                if child.ppid() == self.pid and child.status() != psutil.STATUS_ZOMBIE:
                    out.append(child.pid)
            except psutil.Error:
                continue
        return out

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def new_log(self) -> str:
        """Log text written since the last start."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self.log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def _check_running(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited ({self.returncode()}):\n{self.tail()}")

    def wait_http(self, url: str, timeout: float = 120) -> None:
        """Until url answers 200; raises if the process exits first or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_running()
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout}s ({url}):\n{self.tail()}")

    def wait_log(self, text: str, timeout: float = 120) -> None:
        """Until `text` appears in the output of the current start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_running()
            if text in self.new_log():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.tail()}")

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to the group, SIGKILL if it has not exited within `timeout`."""
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
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


class Stack:
    """A state dir (logs, metrics dirs; the embedded servers when none are given) and the
    processes started in it. `servers` ({DATABASE_URL, REDIS_URL}) uses those servers;
    without it start_services() starts embedded ones in the state dir. `env` is added to
    the scrubbed environment every process gets (e.g. DJANGO_SETTINGS_MODULE)."""

    proc_class = Proc

    def __init__(
        self,
        *,
        servers: dict[str, str] | None = None,
        state_dir: str | os.PathLike | None = None,
        logs_dir: str | os.PathLike | None = None,
        env: dict[str, str] | None = None,
        keep_state: bool = False,
        web_concurrency: int | None = 2,
        web_threads: int | None = None,
        worker_concurrency: int = 2,
        prefix: str = "sfstack.",
    ):
        self.owns_state = state_dir is None
        # Short path: the PostgreSQL socket lives under <state>/pg (AF_UNIX paths are short).
        self.state = Path(state_dir or tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self.logs = Path(logs_dir) if logs_dir else self.state / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.keep_state = keep_state
        self.embedded = servers is None
        self.urls: dict[str, str] = dict(servers or {})
        self.web_concurrency, self.web_threads = web_concurrency, web_threads
        self.worker_concurrency = worker_concurrency
        self.base_env = scrubbed_env()
        self.base_env.update(
            DJANGO_SETTINGS_MODULE="config.settings",
            STOCKFLOW_STATE_DIR=str(self.state),
            PATH=f"{Path(PY).parent}{os.pathsep}{self.base_env.get('PATH', '')}",
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
            **self.urls,
        )
        self.base_env.update(env or {})
        self.procs: dict[str, Proc] = {}
        self._services_started = False

    # --- servers ------------------------------------------------------------------------

    def start_services(self) -> dict[str, str]:
        """The URLs of the servers, starting embedded ones in our state dir if none were
        given. Children get the URLs: they never start servers themselves."""
        if not self.embedded:
            return self.urls
        self.urls = self.embedded_command("start", timeout=300)
        self._services_started = True
        for key in KEYS:
            if not self.urls.get(key):
                raise RuntimeError(f"harness.embedded did not report {key}")
        # Ours, not the machine's: the socket dir is in our state dir, the port is our Redis's.
        port = (self.state / "redis" / "port").read_text().strip()
        ours_pg = str(self.state) in unquote(self.urls["DATABASE_URL"])
        if not ours_pg or not self.urls["REDIS_URL"].endswith(f":{port}/0"):
            raise RuntimeError(f"not the servers of {self.state}: {self.urls}")
        self.base_env.update(self.urls)
        return self.urls

    def embedded_command(
        self, command: str, keep: tuple[str, ...] = (), timeout: float = 120
    ) -> dict[str, str]:
        """`python -m harness.embedded <command>` for our state dir. URLs named in `keep` are
        passed in (that server is left alone); the others are looked up / started."""
        env = {k: v for k, v in self.base_env.items() if k not in KEYS}
        env.update({key: self.urls[key] for key in keep})
        proc = subprocess.run(
            [PY, "-m", "harness.embedded", command],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"harness.embedded {command} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}"
            )
        out = {}
        for line in proc.stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep and key in KEYS:
                out[key] = value
        return out

    def pg_pid(self) -> int | None:
        """Our postmaster: the pid in our PGDATA's postmaster.pid, running postgres on it."""
        pgdata = self.state / "pg"
        return _pid_from(pgdata / "postmaster.pid", "postgres", str(pgdata))

    def redis_pid(self) -> int | None:
        rdir = self.state / "redis"
        try:
            port = (rdir / "port").read_text().strip()
        except OSError:
            return None
        return _pid_from(rdir / "redis.pid", "redis-server", port)

    def pg_log(self) -> Path:
        return self.state / "pg" / "log"

    def start_server(self, key: str, deadline_s: float = 60) -> tuple[int, str]:
        """Start the stopped embedded server of `key` again, at the same URL (retrying: right
        after a crash its old processes may still be exiting). Returns (tries, last error)."""
        keep = next(k for k in KEYS if k != key)
        deadline = time.monotonic() + deadline_s
        tries, last_error = 0, ""
        while True:
            tries += 1
            try:
                urls = self.embedded_command("start", keep=(keep,))
                if urls.get(key) != self.urls[key]:
                    raise RuntimeError(
                        f"{key} changed after restart: {urls.get(key)} != {self.urls[key]}"
                    )
                if (self.redis_pid() if key == "REDIS_URL" else self.pg_pid()) is None:
                    raise RuntimeError(
                        f"harness.embedded start returned but the server for {key} is not running"
                    )
                return tries, last_error
            except RuntimeError as exc:
                last_error = str(exc)[-300:]
                if "changed after restart" in last_error or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

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

    # --- processes -----------------------------------------------------------------------

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict | None = None,
        *,
        ready_url: str | None = None,
        timeout: float = 120,
        log_name: str | None = None,
    ) -> Proc:
        """Any script with our environment (+ env); waits for ready_url to answer 200."""
        proc = self.proc_class(
            name, argv, dict(self.base_env, **(env or {})), self.logs / f"{log_name or name}.log"
        )
        self.procs[name] = proc.start()
        if ready_url:
            proc.wait_http(ready_url, timeout)
        return proc

    def start_web(
        self,
        name: str = "web",
        env: dict | None = None,
        *,
        app: str | None = None,
        timeout: float = 120,
        log_name: str | None = None,
    ) -> Proc:
        """bin/web on a free port (or, with `app`, the same gunicorn config serving another
        WSGI app), ready once /healthz answers 200. Its URL is proc.url."""
        port = free_port()
        prom = self.state / "prom" / name
        full = {"PORT": str(port), "BIND_HOST": "127.0.0.1", "PROMETHEUS_MULTIPROC_DIR": str(prom)}
        if self.web_concurrency is not None:
            full["WEB_CONCURRENCY"] = str(self.web_concurrency)
        if self.web_threads is not None:
            full["WEB_THREADS"] = str(self.web_threads)
        full.update(env or {})  # may override any of the above
        if app:  # bin/web's two lines, for another app module
            prom = Path(full["PROMETHEUS_MULTIPROC_DIR"])
            shutil.rmtree(prom, ignore_errors=True)
            prom.mkdir(parents=True)
            argv = [str(Path(PY).parent / "gunicorn"), app, "--config", "python:config.gunicorn"]
        else:
            argv = [str(BIN / "web")]
        url = f"http://127.0.0.1:{port}"
        proc = self.start(
            name, argv, full, ready_url=f"{url}/healthz", timeout=timeout, log_name=log_name
        )
        proc.url, proc.port = url, port
        return proc

    def start_worker(
        self,
        name: str = "worker",
        env: dict | None = None,
        *,
        args: tuple[str, ...] = (),
        metrics: bool = False,
        nice: int = 0,
        timeout: float = 120,
        log_name: str | None = None,
    ) -> Proc:
        """bin/worker named `name`. metrics=True serves its /metrics on a free port
        (proc.metrics_url). Ready once /metrics answers when it has a metrics port (the
        worker serves it once it is ready), else once it logs "ready." (LOG_LEVEL INFO)."""
        full = {
            "WORKER_NAME": name,
            "WORKER_CONCURRENCY": str(self.worker_concurrency),
            "WORKER_METRICS_PORT": str(free_port() if metrics else 0),
            "PROMETHEUS_MULTIPROC_DIR": str(self.state / "prom" / name),
        }
        full.update(env or {})
        argv = [str(BIN / "worker"), *args]
        if nice:
            argv = ["nice", "-n", str(nice), *argv]
        proc = self.start(name, argv, full, log_name=log_name)
        port = proc.metrics_port = int(full["WORKER_METRICS_PORT"])
        proc.metrics_url = f"http://127.0.0.1:{port}/metrics" if port else ""
        if port:
            proc.wait_http(proc.metrics_url, timeout)
        else:
            proc.wait_log("ready.", timeout)
        return proc

    def start_beat(self, name: str = "beat", env: dict | None = None) -> Proc:
        # bin/beat's own --schedule is under the repo's .state; the later flag wins.
        argv = [str(BIN / "beat"), "--schedule", str(self.state / "celerybeat-schedule")]
        return self.start(name, argv, env)

    def stop(self, name: str, timeout: float = 30) -> None:
        proc = self.procs.pop(name, None)
        if proc:
            proc.stop(timeout)

    # --- teardown ------------------------------------------------------------------------

    def close(self, keep_logs: str | os.PathLike | None = None) -> dict:
        """Stop every process, then the embedded servers we started; copy the logs to
        keep_logs; remove a state dir we created unless keep_state."""
        info: dict = {}
        for name in reversed(list(self.procs)):
            try:
                self.stop(name)
            except Exception as exc:  # keep tearing down
                info.setdefault("stop_errors", []).append(f"{name}: {exc}")
        if self._services_started:
            try:
                self.embedded_command("stop", timeout=120)
            except Exception as exc:
                info["embedded_stop_error"] = str(exc)[-300:]
            # Whatever survived a failed stop, by our own pid files only.
            for pid in filter(None, (self.redis_pid(), self.pg_pid())):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        if keep_logs:
            dest = Path(keep_logs)
            dest.mkdir(parents=True, exist_ok=True)
            for f in self.logs.glob("*.log"):
                shutil.copy2(f, dest / f.name)
            for src, copy in (
                (self.pg_log(), "postgres.log"),
                (self.state / "redis" / "redis.log", "redis.log"),
            ):
                if src.exists():
                    shutil.copy2(src, dest / copy)
            info["logs"] = str(dest)
        if self.keep_state:
            info["state_dir"] = str(self.state)
        elif self.owns_state:
            shutil.rmtree(self.state, ignore_errors=True)
        return info


def _pid_from(pidfile: Path, name: str, in_cmdline: str) -> int | None:
    """The pid in pidfile if it runs `name` with `in_cmdline` in its command line."""
    try:
        pid = int(pidfile.read_text().split()[0])
        p = psutil.Process(pid)
        if (
            p.status() != psutil.STATUS_ZOMBIE
            and p.name() == name
            and in_cmdline in " ".join(p.cmdline())
        ):
            return pid
    except (OSError, ValueError, IndexError, psutil.Error):
        pass
    return None
