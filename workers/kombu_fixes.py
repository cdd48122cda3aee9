"""Two fixes to kombu 5.7's Redis transport, applied when the Celery app is imported.

1. Reuse one redis client per channel. kombu builds a new `redis.Redis` for every
   synchronous command (each publish, ack, queue-length check); a client's constructor
   fills a table of ~170 response callbacks, about 0.3 ms of CPU each time, twice per
   accepted request (task + task-sent event) and again per ack in the worker. The
   client holds no per-command state; its connection pool is the channel's own, so
   sharing it is what the pool is for. A new pool (after a reconnect) gets a new client.

2. A guard for a broker restart under a running worker:

When Redis restarts under a running worker, Celery collects the broken connection
(which clears `transport.client`) and then closes the channel, whose close tries to
restore unacked messages through `_connparams()`: an AttributeError on None that is
not among the errors Celery treats as recoverable, so the worker exits (seen in the
chaos run: 9 worker deaths in 28 Redis restarts). Raising a connection error instead
lets Celery's normal reconnect path run; the unacked messages come back through the
visibility timeout or the job reconciler.
"""

import functools

from kombu.transport import redis as redis_transport
from redis.exceptions import ConnectionError as RedisConnectionError


def install() -> None:
    _reuse_sync_client()
    _guard_connparams()


def _reuse_sync_client() -> None:
    original = redis_transport.Channel._create_client
    if getattr(original, "_stockflow_reuse", False):
        return

    @functools.wraps(original)
    def _create_client(self, asynchronous=False):
        if asynchronous:
            return original(self, asynchronous=True)
        client = self.__dict__.get("_stockflow_client")
        if client is None or client.connection_pool is not self.pool:
            client = self._stockflow_client = original(self, asynchronous=False)
        return client

    _create_client._stockflow_reuse = True
    redis_transport.Channel._create_client = _create_client


def _guard_connparams() -> None:
    original = redis_transport.Channel._connparams
    if getattr(original, "_stockflow_guard", False):
        return

    @functools.wraps(original)
    def _connparams(self, *args, **kwargs):
        if self.connection is None or self.connection.client is None:
            raise RedisConnectionError("broker connection already closed")
        return original(self, *args, **kwargs)

    _connparams._stockflow_guard = True
    redis_transport.Channel._connparams = _connparams
