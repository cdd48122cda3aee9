"""Broker messages a worker cannot turn into a task: set aside one at a time, never fatal.

Without this, one bad message stops the worker: kombu's Redis channel parses every payload
inside the consumer's event loop (`LPUSH celery garbage` -> "Unrecoverable error:
JSONDecodeError"), and Celery lets some body errors out of its handler too. The errors
Celery does catch it logs with the message body, which may hold personal data.

Each such message is pushed, as it came, onto a capped Redis list on the broker
(settings.BROKER_DEAD_LETTER_KEY: inspect it, or LMOVE an entry back after a fix), counted
in celery_messages_rejected_total{reason} and logged as `message.rejected` with its length
and SHA-256 only. Two places meet them: kombu's Redis channel (workers/kombu_fixes.py sends
its failures here) and Celery's consumer (workers/consumer.py).
"""

import base64
import binascii
import hashlib

import structlog
from django.conf import settings

from stockflow.observability import metrics

logger = structlog.get_logger(__name__)

# celery_messages_rejected_total's `reason` label, a fixed enumeration.
UNDECODABLE = "undecodable"  # not UTF-8 or not JSON; or a body its content type cannot decode
MALFORMED = "malformed"  # JSON, but not a message envelope, or a body that is not a task's
UNKNOWN_TASK = "unknown_task"  # a task name this worker does not have
INVALID_TASK = "invalid_task"  # fields Celery refuses (e.g. an ETA that is not a date)
REASONS = (UNDECODABLE, MALFORMED, UNKNOWN_TASK, INVALID_TASK)


class Rejected(ValueError):
    """A broker payload that cannot be delivered, carrying it as it came. A ValueError, as
    kombu's own decode errors are, so callers that catch those still do."""

    def __init__(self, raw, reason: str, error=None, problem: str = "", queue=None):
        super().__init__(reason)
        self.raw, self.reason, self.error = raw, reason, error
        self.problem, self.queue = problem, queue


def envelope_problem(payload, codecs=("base64",)) -> str | None:
    """What keeps kombu's virtual transport from building a Message out of `payload` (it
    would raise inside the consumer's event loop), or None when it can build one."""
    if not isinstance(payload, dict):
        return "not an object"
    props = payload.get("properties")
    if not isinstance(props, dict):
        return "no properties"
    tag = props.get("delivery_tag")
    if isinstance(tag, bool) or not isinstance(tag, str | int):
        return "no delivery tag"
    info = props.get("delivery_info")
    if not isinstance(info, dict) or not {"exchange", "routing_key"} <= info.keys():
        return "no delivery info"  # the Redis QoS reads both when it holds the message unacked
    headers = payload.get("headers")
    if headers is not None and not isinstance(headers, dict):
        return "headers not an object"
    body, encoding = payload.get("body"), props.get("body_encoding")
    if body and not isinstance(body, str):
        return "body not a string"
    if encoding and encoding not in codecs:
        return "unknown body encoding"
    if body and encoding == "base64":
        try:
            base64.b64decode(body)  # what kombu does with it
        except (binascii.Error, ValueError):
            return "body not base64"
    return None


def reject(channel, raw, reason: str, *, queue=None, error=None, problem: str = "") -> None:
    """Count, dead-letter and log one message the worker will not run."""
    data = raw if isinstance(raw, bytes) else str(raw).encode("utf-8", "backslashreplace")
    metrics.MESSAGES_REJECTED.labels(reason).inc()
    dead_letter = _dead_letter(channel, raw)
    # Never the payload itself: it may hold personal data. Its hash finds it in the list.
    logger.error(
        "message.rejected",
        reason=reason,
        problem=problem or None,
        queue=queue,
        length=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        error=type(error).__name__ if error is not None else None,
        dead_letter=dead_letter,
    )


def _dead_letter(channel, raw) -> str | None:
    key, limit = settings.BROKER_DEAD_LETTER_KEY, settings.BROKER_DEAD_LETTER_MAX_LENGTH
    if limit <= 0 or not hasattr(channel, "conn_or_acquire"):  # off, or not a Redis broker
        return None
    try:
        with channel.conn_or_acquire() as client, client.pipeline() as pipe:
            pipe.lpush(key, raw).ltrim(key, 0, limit - 1).execute()
    except Exception as exc:  # setting it aside must not stop the worker either
        logger.warning("message.dead_letter_failed", error=type(exc).__name__)
        return None
    return key
