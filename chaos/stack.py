"""The system under test, owned end to end by the harness: embedded PostgreSQL and Redis
in a private state dir, and web / workers / beat as subprocesses in their own sessions.

Only processes this module started are ever signalled: the servers are found through
the pid files of *our* state dir (and checked by name and command line), the app
processes through the Popen handles and the process groups they lead.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote

import psutil

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

# Variables of the caller that must not leak into the stack: they would point it at
# other servers (the machine's shared ones, pytest's test database) or other metrics dirs.
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
    "DJANGO_SETTINGS_MODULE",
    "PYTEST_CURRENT_TEST",
)


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int, name: str | None = None) -> bool:
    """pid runs (not a zombie: PID 1 here does not reap orphans) and, if given, is `name`."""
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and (name is None or p.name() == name)
    except (psutil.Error, ValueError):
        return False


def _wait_gone(pids, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Proc:
    """One app process (bin/web, bin/worker, bin/beat) in its own session: its pid is
    also its process group id, which its children (gunicorn workers, pool children) share."""

    def __init__(self, name: str, argv: list[str], env: dict, log_path: Path):
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.popen: subprocess.Popen | None = None
        self.pgids: list[int] = []  # every group we created, for the final sweep
        self.starts = 0
        self.log_offset = 0
        self.scan_pos, self.fatal_seen = 0, False
        self.started_at = 0.0

    def crashed(self) -> bool:
        """Its log since the last start has Celery's "Unrecoverable error": it is dying
        by itself, whether or not it has exited yet. Incremental."""
        if not self.fatal_seen:
            try:
                with self.log_path.open("rb") as f:
                    f.seek(self.scan_pos)
                    chunk = f.read()
            except OSError:
                return False
            cut = chunk.rfind(b"\n") + 1  # whole lines only
            self.scan_pos += cut
            self.fatal_seen = b"Unrecoverable error" in chunk[:cut]
        return self.fatal_seen

    def start(self) -> None:
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.scan_pos, self.fatal_seen = self.log_offset, False
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
        self.pgids.append(self.popen.pid)
        self.starts += 1
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def returncode(self):
        return self.popen.poll() if self.popen else None

    def new_log(self) -> str:
        """Log text written since the last start."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self.log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def children(self) -> list[int]:
        if not self.alive():
            return []
        try:
            kids = psutil.Process(self.pid).children()
        except psutil.Error:
            return []
        out = []
        for c in kids:
            try:
                if c.status() != psutil.STATUS_ZOMBIE:
                    out.append(c.pid)
            except psutil.Error:
                continue
        return out

    def kill9(self) -> None:
        """kill -9 the main process only (its children are orphaned, as after an OOM kill)."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait()

    def kill9_group(self) -> None:
        """kill -9 the main process and every child of it (a container dying)."""
        if self.alive():
            os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait()

    def stop(self, timeout: float = 20) -> None:
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait()
            except ProcessLookupError:
                pass
        self.sweep()

    def sweep(self, old_only: bool = False) -> list[int]:
        """SIGKILL what is left in the groups we created (e.g. pool children orphaned by a
        killed main; old_only: not the current process's group). A process must be in one
        of our groups *and* be younger than the harness, so a recycled pid is never hit."""
        killed = []
        for pgid in self.pgids:
            if old_only and self.alive() and pgid == self.pid:
                continue
            for p in psutil.process_iter(["pid", "create_time", "status"]):
                try:
                    if p.info["status"] == psutil.STATUS_ZOMBIE or os.getpgid(p.pid) != pgid:
                        continue
                    if p.info["create_time"] + 1 < self._epoch:
                        continue
                    os.kill(p.pid, signal.SIGKILL)
                    killed.append(p.pid)
                except (ProcessLookupError, PermissionError, psutil.Error, OSError):
                    continue
        return killed

    _epoch = time.time()  # harness import time: everything we start is younger


class Stack:
    """Embedded servers in a temporary state dir plus the app processes."""

    def __init__(
        self,
        *,
        workers: int = 2,
        worker_concurrency: int = 2,
        web_concurrency: int = 2,
        queued_lease: int = 5,
        running_lease: int = 10,
        reconcile_interval: int = 2,
        keep_state: bool = False,
    ):
        # Short path: the PostgreSQL socket lives in <state>/pg and AF_UNIX paths are short.
        self.state = Path(tempfile.mkdtemp(prefix="sfchaos.", dir="/tmp"))
        self.logs = self.state / "logs"
        self.logs.mkdir()
        self.keep_state = keep_state
        self.n_workers, self.worker_concurrency, self.web_concurrency = (
            workers,
            worker_concurrency,
            web_concurrency,
        )
        env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
        env.update(
            DJANGO_SETTINGS_MODULE="config.settings",
            STOCKFLOW_STATE_DIR=str(self.state),
            PATH=f"{Path(PY).parent}:{env.get('PATH', '')}",
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
            JOB_QUEUED_LEASE_SECONDS=str(queued_lease),
            JOB_RUNNING_LEASE_SECONDS=str(running_lease),
            JOB_RECONCILE_INTERVAL_SECONDS=str(reconcile_interval),
        )
        self.base_env = env
        self.urls: dict[str, str] = {}
        self.port = 0
        self.web: Proc | None = None
        self.beat: Proc | None = None
        self.workers: list[Proc] = []

    # --- embedded servers ---------------------------------------------------------------

    def _embedded(
        self, command: str, keep: tuple[str, ...] = (), timeout: float = 120
    ) -> dict[str, str]:
        """Run `python -m harness.embedded <command>` for our state dir. URLs named in `keep`
        are passed in (so that server is left alone); the others are looked up/started."""
        env = {k: v for k, v in self.base_env.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        for key in keep:
            env[key] = self.urls[key]
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
            if sep and key in ("DATABASE_URL", "REDIS_URL"):
                out[key] = value
        return out

    def start_services(self) -> None:
        # `start` prints KEY=url lines (`env` prints the same as shell-quoted exports).
        self.urls = self._embedded("start", timeout=180)
        for key in ("DATABASE_URL", "REDIS_URL"):
            if not self.urls.get(key):
                raise RuntimeError(f"harness.embedded did not report {key}")
        # Ours, not the machine's: the socket dir is in our state dir, the port is our Redis's.
        port = (self.state / "redis" / "port").read_text().strip()
        ours_pg = str(self.state) in unquote(self.urls["DATABASE_URL"])
        if not ours_pg or not self.urls["REDIS_URL"].endswith(f":{port}/0"):
            raise RuntimeError(f"not the servers of {self.state}: {self.urls}")
        self.base_env.update(self.urls)  # children never start servers themselves
        log(f"embedded servers up in {self.state}: {self.urls}")

    def pg_pid(self) -> int | None:
        pgdata = self.state / "pg"
        try:
            pid = int((pgdata / "postmaster.pid").read_text().split()[0])
            p = psutil.Process(pid)
            if (
                p.status() != psutil.STATUS_ZOMBIE
                and p.name() == "postgres"
                and str(pgdata) in p.cmdline()
            ):
                return pid
        except (OSError, ValueError, IndexError, psutil.Error):
            pass
        return None

    def redis_pid(self) -> int | None:
        rdir = self.state / "redis"
        try:
            pid = int((rdir / "redis.pid").read_text().split()[0])
            port = (rdir / "port").read_text().strip()
            p = psutil.Process(pid)
            if (
                p.status() != psutil.STATUS_ZOMBIE
                and p.name() == "redis-server"
                and port in " ".join(p.cmdline())
            ):
                return pid
        except (OSError, ValueError, IndexError, psutil.Error):
            pass
        return None

    def _restart(self, key: str, keep: str, deadline_s: float) -> tuple[int, str]:
        """Start the stopped server again (retrying: right after a crash the old processes
        may still be exiting). Returns (tries, last error)."""
        deadline = time.monotonic() + deadline_s
        tries, last_error = 0, ""
        while True:
            tries += 1
            try:
                urls = self._embedded("start", keep=(keep,))
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

    def restart_redis(self, down_s: float) -> dict:
        """kill -9 redis-server (no persistence: every message is gone), then start it again."""
        pid = self.redis_pid()
        if pid is None:
            raise RuntimeError("our redis-server is not running")
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        _wait_gone([pid], 10)
        time.sleep(down_s)
        tries, err = self._restart("REDIS_URL", keep="DATABASE_URL", deadline_s=30)
        return {
            "pid": pid,
            "signal": "SIGKILL",
            "down_s": round(time.monotonic() - t0, 2),
            "start_tries": tries,
            **({"first_start_error": err} if err and tries > 1 else {}),
        }

    def restart_postgres(self, sig: signal.Signals, down_s: float) -> dict:
        """Signal the postmaster (SIGKILL: crash and WAL recovery; SIGQUIT: immediate;
        SIGINT: fast shutdown), wait for its processes to go, then start it again."""
        pid = self.pg_pid()
        if pid is None:
            raise RuntimeError("our postmaster is not running")
        family = [pid] + [c.pid for c in psutil.Process(pid).children()]
        t0 = time.monotonic()
        os.kill(pid, sig)
        gone = _wait_gone(family, 30)
        t_gone = time.monotonic()
        time.sleep(down_s)
        t_start = time.monotonic()
        tries, err = self._restart("DATABASE_URL", keep="REDIS_URL", deadline_s=60)
        return {
            "pid": pid,
            "signal": sig.name,
            "processes_exited": gone,
            "exit_s": round(t_gone - t0, 2),
            "start_s": round(time.monotonic() - t_start, 2),
            "down_s": round(time.monotonic() - t0, 2),
            "start_tries": tries,
            **({"first_start_error": err} if err and tries > 1 else {}),
        }

    # --- app processes ---------------------------------------------------------------------

    def manage(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [PY, str(ROOT / "manage.py"), *args],
            cwd=ROOT,
            env=self.base_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start_app(self) -> None:
        self.port = free_port()
        web_env = dict(
            self.base_env,
            PORT=str(self.port),
            BIND_HOST="127.0.0.1",
            WEB_CONCURRENCY=str(self.web_concurrency),
            PROMETHEUS_MULTIPROC_DIR=str(self.state / "prom" / "web"),
        )
        self.web = Proc("web", [str(ROOT / "bin" / "web")], web_env, self.logs / "web.log")
        self.web.start()
        for i in range(1, self.n_workers + 1):
            wenv = dict(
                self.base_env,
                WORKER_NAME=f"chaos-w{i}",
                WORKER_CONCURRENCY=str(self.worker_concurrency),
                WORKER_METRICS_PORT="0",
                PROMETHEUS_MULTIPROC_DIR=str(self.state / "prom" / f"w{i}"),
            )
            w = Proc(f"w{i}", [str(ROOT / "bin" / "worker")], wenv, self.logs / f"worker-w{i}.log")
            w.start()
            self.workers.append(w)
        # bin/beat's own --schedule is under the repo's .state; the later flag wins.
        self.beat = Proc(
            "beat",
            [str(ROOT / "bin" / "beat"), "--schedule", str(self.state / "celerybeat-schedule")],
            dict(self.base_env),
            self.logs / "beat.log",
        )
        self.beat.start()
        for w in self.workers:
            self.wait_worker_ready(w, 90)

    def wait_worker_ready(self, w: Proc, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not w.alive():
                raise RuntimeError(f"worker {w.name} exited ({w.returncode()}):\n{w.tail()}")
            if " ready." in w.new_log() or "ready." in w.new_log():
                return True
            time.sleep(0.2)
        return False

    def processes(self) -> list[Proc]:
        return [p for p in (self.web, self.beat, *self.workers) if p is not None]

    # --- teardown ----------------------------------------------------------------------------

    def close(self, keep_logs: str | None = None) -> dict:
        info: dict = {"orphans_swept": 0}
        for p in self.processes():
            try:
                info["orphans_swept"] += len(p.sweep(old_only=True))  # leftovers of killed mains
                p.stop()
            except Exception as exc:  # keep tearing down
                info.setdefault("stop_errors", []).append(f"{p.name}: {exc}")
        try:
            self._embedded("stop", timeout=90)
        except Exception as exc:
            info["embedded_stop_error"] = str(exc)[-300:]
        # Whatever survived a failed stop, by our own pid files only.
        for pid in filter(None, (self.redis_pid(), self.pg_pid())):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if keep_logs:
            dest = Path(keep_logs)
            dest.mkdir(parents=True, exist_ok=True)
            for f in self.logs.glob("*.log"):
                shutil.copy2(f, dest / f.name)
            for f in (self.state / "pg" / "log", self.state / "redis" / "redis.log"):
                if f.exists():
                    shutil.copy2(
                        f, dest / f"{f.parent.name}-{f.name}".replace("pg-log", "postgres.log")
                    )
            info["logs"] = str(dest)
        if self.keep_state:
            info["state_dir"] = str(self.state)
        else:
            shutil.rmtree(self.state, ignore_errors=True)
        return info
