"""Which failures are worth a retry, and under which bounded `reason` label."""
import psycopg.errors
from django.db import DatabaseError, InterfaceError, OperationalError
from kombu.exceptions import OperationalError as BrokerOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError

REASONS = ("deadlock", "serialization", "db_unavailable", "broker", "other")


class TransientError(Exception):
    """A fault that may go away by itself: retry with backoff."""

    def __init__(self, reason: str, cause: BaseException):
        super().__init__(f"{reason}: {type(cause).__name__}: {cause}")
        self.reason = reason


def classify(exc: BaseException) -> str | None:
    """The retry reason for a transient fault, or None if retrying cannot help."""
    cause = exc.__cause__ if isinstance(exc, DatabaseError) and exc.__cause__ else exc
    if isinstance(cause, psycopg.errors.DeadlockDetected):
        return "deadlock"
    if isinstance(cause, psycopg.errors.SerializationFailure):
        return "serialization"
    if isinstance(cause, (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled)):
        return "other"
    if isinstance(exc, (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)):
        return "db_unavailable"
    if isinstance(exc, (BrokerOperationalError, RedisConnectionError, ConnectionError)):
        return "broker"
    return None
