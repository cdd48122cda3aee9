"""Worker liveness for /readyz: each worker's main process records a timestamp in
Redis every few seconds; readiness asks whether any is recent."""

import contextlib
import time

import redis
from celery import bootsteps

from stockflow.platform.redis_client import client

KEY = "stockflow:worker-heartbeats"
INTERVAL_SECONDS = 5.0


def beat(hostname: str) -> None:
    with contextlib.suppress(redis.RedisError):  # Redis is down; readiness will say so
        client().zadd(KEY, {hostname: time.time()})


def live_workers(max_age: float) -> int:
    now = time.time()
    c = client()
    c.zremrangebyscore(KEY, "-inf", now - 10 * max_age)
    return c.zcount(KEY, now - max_age, "+inf")


class Heartbeat(bootsteps.StartStopStep):
    """Runs on the worker's own timer (main process), independent of task events."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker, **kwargs):
        self.tref = None

    def start(self, worker):
        beat(worker.hostname)
        self.tref = worker.timer.call_repeatedly(
            INTERVAL_SECONDS, beat, (worker.hostname,), priority=10
        )

    def stop(self, worker):
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        with contextlib.suppress(redis.RedisError):
            client().zrem(KEY, worker.hostname)
