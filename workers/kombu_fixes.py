"""A guard for kombu 5.7's Redis transport, applied when the Celery app is imported.

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
