"""Request ids: what a sane one looks like."""

import re
import uuid

# Sane ids only: a caller must not be able to inject log lines or huge headers.
_VALID = re.compile(r"^[A-Za-z0-9._:\-]{8,128}$")


def sanitize(candidate: str | None) -> str:
    if candidate and _VALID.match(candidate):
        return candidate
    return str(uuid.uuid4())
