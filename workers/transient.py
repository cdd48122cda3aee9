"""Which failures are worth a retry, and under which bounded `reason` label."""

import psycopg.errors
from django.db import DatabaseError, InterfaceError, OperationalError
from kombu.exceptions import OperationalError as BrokerOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError

REASONS = ("deadlock", "serialization", "lock_timeout", "db_unavailable", "broker", "other")


class TransientError(Exception):
    """A fault that may go away by itself: retry with backoff."""

    def __init__(self, reason: str, cause: BaseException | None = None, message: str = ""):
        super().__init__(message or f"{reason}: {type(cause).__name__}: {cause}")
        self.reason = reason

    def __reduce__(self):
        # Celery hands on only exceptions that survive pickling; otherwise on_failure and
        # task_failure see an UnpickleableExceptionWrapper instead of this class.
        return type(self), (self.reason, None, str(self))


def cause_of(exc: BaseException) -> BaseException:
    """The error that happened: inside a TransientError, inside Django's DatabaseError wrapper."""
    if isinstance(exc, TransientError) and exc.__cause__:
        exc = exc.__cause__
    return exc.__cause__ if isinstance(exc, DatabaseError) and exc.__cause__ else exc


def classify(exc: BaseException) -> str | None:
    """The retry reason for a transient fault, or None if retrying cannot help."""
    cause = cause_of(exc)
    if isinstance(cause, psycopg.errors.DeadlockDetected):
        return "deadlock"
    if isinstance(cause, psycopg.errors.SerializationFailure):
        return "serialization"
    if isinstance(cause, (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled)):
        return "lock_timeout"  # lock_timeout / statement_timeout: the row was busy
    if isinstance(
        exc, (OperationalError, InterfaceError, psycopg.OperationalError, psycopg.InterfaceError)
    ):
        return "db_unavailable"
    if isinstance(exc, (BrokerOperationalError, RedisConnectionError, ConnectionError)):
        return "broker"
    return None
