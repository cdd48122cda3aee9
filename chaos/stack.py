"""The chaos run's stack: harness.processes.Stack on embedded PostgreSQL and Redis in a
private state dir (web, N workers, beat; short job leases), with Redis or a private
RabbitMQ node (harness.rabbitmq_node) as the broker, plus the faults it takes: kill -9 of
a process or its group, and restarts of the servers.

Only processes this run started are ever signalled: the servers by the pid files of *our*
state dir (checked by name and command line), the app processes through their Popen
handles and the process groups they lead, swept for orphans by group and start time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter

import psutil

from harness import processes
from harness.rabbitmq_node import RabbitNode
from workers.rabbitmq import DEAD_LETTER

log = processes.logger("chaos")


def _alive(pid: int) -> bool:
    """pid runs and is not a zombie (PID 1 here does not reap orphans)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, ValueError):
        return False


def _wait_gone(pids, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Proc(processes.Proc):
    """An app process that chaos kills and restarts: it remembers every process group it
    led (for the final sweep) and notices Celery's fatal error in its own log."""

    _epoch = time.time()  # harness import time: everything we start is younger

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pgids: list[int] = []  # every group we created, for the final sweep
        self.starts = 0
        self.scan_pos, self.fatal_seen, self.ready_seen = 0, False, False

    def start(self) -> Proc:
        super().start()
        self.pgids.append(self.pid)
        self.starts += 1
        self.scan_pos, self.fatal_seen, self.ready_seen = self.log_offset, False, False
        return self

    def _scan(self) -> None:
        """Celery's markers in the log written since the last scan (whole lines only)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self.scan_pos)
                chunk = f.read()
        except OSError:
            return
        cut = chunk.rfind(b"\n") + 1
        self.scan_pos += cut
        self.fatal_seen = self.fatal_seen or b"Unrecoverable error" in chunk[:cut]
        self.ready_seen = self.ready_seen or b' ready."' in chunk[:cut]

    def crashed(self) -> bool:
        """Its log since the last start has Celery's "Unrecoverable error": it is dying
        by itself, whether or not it has exited yet. Incremental."""
        if not self.fatal_seen:
            self._scan()
        return self.fatal_seen

    def ready(self) -> bool:
        """A worker logged "<name> ready." since its last start: it consumes."""
        if not self.ready_seen:
            self._scan()
        return self.ready_seen

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
        super().stop(timeout)
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


class Stack(processes.Stack):
    """Embedded servers in a temporary state dir plus web, the workers and beat."""

    proc_class = Proc

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
        broker: str = "redis",
    ):
        super().__init__(
            web_concurrency=web_concurrency,
            worker_concurrency=worker_concurrency,
            keep_state=keep_state,
            prefix="sfchaos.",
            env={
                "JOB_QUEUED_LEASE_SECONDS": str(queued_lease),
                "JOB_RUNNING_LEASE_SECONDS": str(running_lease),
                "JOB_RECONCILE_INTERVAL_SECONDS": str(reconcile_interval),
            },
        )
        self.n_workers = workers
        self.broker = broker
        self.rabbit: RabbitNode | None = None
        self.port = 0
        self.web: Proc | None = None
        self.beat: Proc | None = None
        self.workers: list[Proc] = []

    def start_services(self) -> dict[str, str]:
        urls = super().start_services()
        log(f"embedded servers up in {self.state}: {urls}")
        if self.broker == "rabbitmq":
            # Redis stays (heartbeats, readyz); only the Celery broker moves.
            self.rabbit = RabbitNode(self.state / "rabbitmq", tag="sfchaos")
            self.base_env["CELERY_BROKER_URL"] = self.rabbit.start()
            log(f"private RabbitMQ node {self.rabbit.name} up: {self.rabbit.url}")
        return urls

    # --- app processes ---------------------------------------------------------------------

    def start_app(self) -> None:
        self.web = self.start_web("web")
        self.port = self.web.port
        for i in range(1, self.n_workers + 1):
            env = {"WORKER_NAME": f"chaos-w{i}"}
            self.workers.append(
                self.start_worker(f"w{i}", env, timeout=90, log_name=f"worker-w{i}")
            )
        self.beat = self.start_beat()

    def processes(self) -> list[Proc]:
        return [p for p in (self.web, self.beat, *self.workers) if p is not None]

    # --- server faults ---------------------------------------------------------------------

    def restart_broker(self, down_s: float) -> dict:
        if self.rabbit is None:
            return self.restart_redis(down_s)
        return self.rabbit.restart(down_s)

    def broker_queues(self) -> dict:
        """RabbitMQ's queues at the end (dead-lettered messages show here); {} on Redis."""
        return self.rabbit.queues() if self.rabbit is not None else {}

    def dead_letters(self) -> dict:
        """What the dead-letter queue holds, counted by (task, reason, queue it came from)."""
        if self.rabbit is None:
            return {}
        seen = Counter(
            f"{m['task']} {m['reason']} from {m['from_queue']}"
            for m in self.rabbit.peek(DEAD_LETTER)
        )
        return dict(seen)

    def restart_redis(self, down_s: float) -> dict:
        """kill -9 redis-server (no persistence: every message is gone), then start it again."""
        pid = self.redis_pid()
        if pid is None:
            raise RuntimeError("our redis-server is not running")
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        _wait_gone([pid], 10)
        time.sleep(down_s)
        tries, err = self.start_server("REDIS_URL", deadline_s=30)
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
        tries, err = self.start_server("DATABASE_URL", deadline_s=60)
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

    # --- teardown ----------------------------------------------------------------------------

    def close(self, keep_logs: str | None = None) -> dict:
        swept = 0
        for p in self.processes():
            with contextlib.suppress(Exception):  # keep tearing down
                swept += len(p.sweep(old_only=True))  # leftovers of killed mains
        if self.rabbit is not None:
            # The app processes first (they hold broker connections), then the node, before
            # super() removes the state dir its data lives in.
            for name in reversed(list(self.procs)):
                with contextlib.suppress(Exception):
                    self.stop(name)
            self.rabbit.stop()
            if keep_logs:
                self.rabbit.copy_logs(keep_logs)
        return {"orphans_swept": swept, **super().close(keep_logs)}
