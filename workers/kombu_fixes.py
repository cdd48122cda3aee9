"""Three fixes to kombu 5.7's Redis transport, applied when the Celery app is imported.

They patch private methods: pyproject.toml pins kombu to 5.7.x, and
tests/unit/test_kombu_fixes_target.py fails when any patched method's source changes.
Upstream: restoring unacked messages through a connection already gone (fix 2) is
celery/kombu#970 and celery/celery#10205; a worker dying on a message it cannot decode
(fix 3) is celery/celery#4308 and celery/kombu#2421 (no hook before the transport decodes).

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

3. One undecodable message must not stop the worker. The channel decodes each payload it
   pops (UTF-8, JSON) and builds a Message from it inside the consumer's event loop, so a
   raw `LPUSH celery garbage`, or JSON that is not a message envelope, raised out of the
   loop: "Unrecoverable error: JSONDecodeError", and the worker exited. The decoders the
   channel calls now raise workers.poison.Rejected (a ValueError, as before) carrying the
   payload, an envelope kombu could not build a Message from is refused before delivery,
   and the reading methods hand a Rejected to workers.poison.reject (counted,
   dead-lettered, logged without content) and report "nothing delivered" (Empty) instead.
"""

import functools
import json
from queue import Empty

from kombu.transport import redis as redis_transport
from redis.exceptions import ConnectionError as RedisConnectionError

from workers import poison


def install() -> None:
    _reuse_sync_client()
    _guard_connparams()
    _reject_undecodable()


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


def _reject_undecodable() -> None:
    if getattr(redis_transport.Channel._brpop_read, "_stockflow_poison", False):
        return
    loads, bytes_to_str = redis_transport.loads, redis_transport.bytes_to_str

    def checked_loads(s):
        try:
            return loads(s)
        except ValueError as exc:
            raise poison.Rejected(s, poison.UNDECODABLE, exc) from exc

    def checked_bytes_to_str(s):
        # kombu decodes with errors="replace", which loses the payload's bytes; kombu only
        # ever writes UTF-8 JSON, so anything else is refused whole.
        if isinstance(s, bytes):
            try:
                return s.decode()
            except UnicodeDecodeError as exc:
                raise poison.Rejected(s, poison.UNDECODABLE, exc) from exc
        return bytes_to_str(s)

    # Module globals: the names the channel's methods call.
    redis_transport.loads = checked_loads
    redis_transport.bytes_to_str = checked_bytes_to_str

    deliver = redis_transport.Transport._deliver

    @functools.wraps(deliver)
    def _deliver(self, message, queue):
        problem = poison.envelope_problem(message)
        if problem:
            raise poison.Rejected(
                json.dumps(message), poison.MALFORMED, problem=problem, queue=queue
            )
        return deliver(self, message, queue)

    redis_transport.Transport._deliver = _deliver

    for name in ("_brpop_read", "_get", "_receive_one"):
        setattr(redis_transport.Channel, name, _rejecting(getattr(redis_transport.Channel, name)))


def _rejecting(read):
    """A channel method that pops a payload and delivers it: a Rejected one is set aside,
    and the caller hears "nothing delivered", as after an empty read."""

    @functools.wraps(read)
    def wrapper(self, *args, **kwargs):
        try:
            return read(self, *args, **kwargs)
        except poison.Rejected as exc:
            poison.reject(
                self, exc.raw, exc.reason, queue=exc.queue, error=exc.error, problem=exc.problem
            )
            raise Empty() from None

    wrapper._stockflow_poison = True
    return wrapper
