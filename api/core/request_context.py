"""The request id of the work in hand, in a contextvar shared by web and worker.

structlog's contextvars carry it into every log line; this module is the one
place that validates and reads it.
"""
import re
import uuid

import structlog

# Sane ids only: a caller must not be able to inject log lines or huge headers.
_VALID = re.compile(r"^[A-Za-z0-9._:\-]{8,128}$")


def sanitize(candidate: str | None) -> str:
    if candidate and _VALID.match(candidate):
        return candidate
    return str(uuid.uuid4())


def bind(**values) -> None:
    structlog.contextvars.bind_contextvars(**values)


def current_request_id() -> str | None:
    return structlog.contextvars.get_contextvars().get("request_id")
