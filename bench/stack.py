"""The bench's stack: harness.processes.Stack on embedded PostgreSQL and Redis in a private
temporary state dir, with Redis or a private RabbitMQ node (harness.rabbitmq_node) as the
Celery broker, plus what the bench measures on it: CPU seconds and peak memory of each
process tree, PostgreSQL connections by application, and the floor's worker
(bench.floor_app: bare Celery, no stockflow code)."""

from __future__ import annotations

import os
import threading
import time

import psutil

from harness import processes
from harness.processes import PY, ROOT, Proc  # noqa: F401 (bench.cpu imports them from here)
from harness.rabbitmq_node import RabbitNode

log = processes.logger("bench")


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


class Stack(processes.Stack):
    def __init__(
        self,
        *,
        web_concurrency: int = 2,
        web_threads: int = 4,
        worker_concurrency: int = 2,
        keep_state: bool = False,
        worker_nice: int = 0,
        broker: str = "redis",
    ):
        super().__init__(
            web_concurrency=web_concurrency,
            web_threads=web_threads,
            worker_concurrency=worker_concurrency,
            keep_state=keep_state,
            prefix="sfbench.",
        )
        self.worker_nice = worker_nice
        self.broker = broker
        self.rabbit: RabbitNode | None = None
        self.memory = MemorySampler()
        self.restarts = 0

    def start_services(self) -> dict[str, str]:
        urls = super().start_services()
        if self.broker == "rabbitmq":
            # Redis stays (heartbeats, readyz); only the Celery broker moves.
            self.rabbit = RabbitNode(self.state / "rabbitmq", tag="sfbench")
            self.base_env["CELERY_BROKER_URL"] = self.rabbit.start()
            log(f"private RabbitMQ node {self.rabbit.name} up: {self.rabbit.url}")
        return urls

    @property
    def broker_url(self) -> str:
        return self.rabbit.url if self.rabbit is not None else self.urls["REDIS_URL"]

    def cpu_snapshot(self) -> dict[str, float]:
        """CPU seconds so far of each process tree we run, PostgreSQL, Redis and RabbitMQ
        included."""
        out = {
            name: tree_cpu_seconds(proc.pid) for name, proc in self.procs.items() if proc.alive()
        }
        rabbit = self.rabbit.pid if self.rabbit is not None else None
        for name, pid in (
            ("postgres", self.pg_pid()),
            ("redis", self.redis_pid()),
            ("rabbitmq", rabbit),
        ):
            if pid:
                out[name] = tree_cpu_seconds(pid)
        t = os.times()
        out["bench"] = t.user + t.system  # this process: load generator, polling
        return out

    # PGAPPNAME: the statement count tells web's statements from the worker's by it.

    def start_web(self, name: str = "web", env: dict | None = None, **kwargs) -> Proc:
        proc = super().start_web(name, dict({"PGAPPNAME": f"stockflow-{name}"}, **(env or {})), **kwargs)  # fmt: skip
        self.memory.track(name, proc)
        return proc

    def start_worker(self, name: str = "worker", env: dict | None = None, **kwargs) -> Proc:
        env = dict({"PGAPPNAME": f"stockflow-{name}"}, **(env or {}))
        kwargs.setdefault("metrics", True)
        kwargs.setdefault("nice", self.worker_nice)
        proc = super().start_worker(name, env, **kwargs)
        self.memory.track(name, proc)
        return proc

    def start_floor(self, name: str = "floor-worker", timeout: float = 120) -> Proc:
        """The floor's worker: bench.floor_app with bin/worker's pool flags (prefork, the
        same concurrency, no mingle/gossip). WARNING level: Celery's own per-task INFO lines
        are off in stockflow too, and the floor is the queue's cost, not logging's. Ready
        once it answers a broadcast ping (no "ready." line at WARNING)."""
        from bench.floor_app import app

        argv = [
            str(processes.Path(PY).parent / "celery"), "-A", "bench.floor_app", "worker",
            "--pool", "prefork", "--concurrency", str(self.worker_concurrency),
            "--hostname", f"{name}@%h", "--loglevel", "WARNING",
            "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        proc = self.start(name, argv, {"CELERY_BROKER_URL": self.broker_url})
        proc.hostname = f"{name}@{os.uname().nodename}"
        deadline = time.monotonic() + timeout
        while not app.control.ping(destination=[proc.hostname], timeout=0.5):
            proc._check_running()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready after {timeout}s:\n{proc.tail()}")
        self.memory.track(name, proc)
        return proc

    def stop(self, name: str, timeout: float = 30) -> None:
        self.memory.untrack(name)
        super().stop(name, timeout)

    def close(self, keep_logs=None) -> dict:
        self.memory.stop()
        if self.rabbit is not None:
            # The app processes first (they hold broker connections), then the node, before
            # super() removes the state dir its data lives in.
            for name in reversed(list(self.procs)):
                self.stop(name)
            self.rabbit.stop()
            if keep_logs:
                self.rabbit.copy_logs(keep_logs)
        return super().close(keep_logs)
