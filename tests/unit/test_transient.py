"""Which failures retry, under which reason label: workers/transient.py."""

import pickle

import psycopg.errors
import pytest
from django.db import DatabaseError, IntegrityError, OperationalError
from kombu.exceptions import OperationalError as BrokerOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError

from stockflow.platform.errors import DomainError, ErrorCode
from workers.transient import REASONS, TransientError, cause_of, classify


def django_wrapped(cause: Exception, wrapper=OperationalError) -> Exception:
    """As Django raises them: its own class, the driver's error as __cause__."""
    try:
        raise wrapper(str(cause)) from cause
    except wrapper as exc:
        return exc


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (django_wrapped(psycopg.errors.DeadlockDetected("deadlock detected")), "deadlock"),
        (
            django_wrapped(psycopg.errors.SerializationFailure("could not serialize")),
            "serialization",
        ),
        (django_wrapped(psycopg.errors.LockNotAvailable("lock timeout")), "lock_timeout"),
        (django_wrapped(psycopg.errors.QueryCanceled("statement timeout")), "lock_timeout"),
        (
            django_wrapped(psycopg.OperationalError("server closed the connection")),
            "db_unavailable",
        ),
        (OperationalError("connection refused"), "db_unavailable"),
        (BrokerOperationalError("broker down"), "broker"),
        (RedisConnectionError("redis down"), "broker"),
        (ConnectionRefusedError("refused"), "broker"),
    ],
)
def test_transient_faults_retry_with_their_reason(error, reason):
    assert classify(error) == reason
    assert reason in REASONS  # a bounded metric label


@pytest.mark.parametrize(
    "error",
    [
        DomainError(ErrorCode.INSUFFICIENT_STOCK, "not enough"),  # business: never retried
        django_wrapped(psycopg.errors.UniqueViolation("duplicate key"), IntegrityError),
        KeyError("job kind"),
        ValueError("bad payload"),
    ],
)
def test_everything_else_is_not_retried(error):
    assert classify(error) is None


def test_cause_of_looks_through_the_retry_wrapper_and_djangos_wrapper():
    driver = psycopg.errors.DeadlockDetected("deadlock detected")
    django_error = django_wrapped(driver, DatabaseError)
    try:
        raise TransientError("deadlock", django_error) from django_error
    except TransientError as wrapped:
        assert cause_of(wrapped) is driver
    assert cause_of(ValueError("x")).args == ("x",)


def test_a_transient_error_survives_pickling_with_its_reason():
    # Celery hands exceptions between processes pickled: the reason label must survive.
    error = TransientError("lock_timeout", psycopg.errors.LockNotAvailable("busy"))
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.reason, str(copy)) == (TransientError, "lock_timeout", str(error))
