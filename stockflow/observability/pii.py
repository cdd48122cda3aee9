"""Keep personal data out of logs and Sentry events.

Keys that name personal data are redacted at any depth. Inside every string, what can
carry personal data is masked: the values of a URL's query string (`?name=…&phone=…`),
quoted values of personal keys as repr() or JSON renders them (`'name': 'Ada'`),
e-mail addresses, client IP addresses, international phone numbers and API tokens. The
loopback and unspecified addresses a server binds to (127.0.0.0/8, 0.0.0.0, ::1) are
nobody's personal data and stay readable in startup lines. A value of any other type is
scrubbed as what it will be rendered as (this also covers exception text).
"""

import dataclasses
import datetime
import enum
import functools
import re
import uuid
from collections.abc import Mapping

REDACTED = "[redacted]"

PII_KEYS = frozenset(
    {
        "name",
        "first_name",
        "last_name",
        "full_name",
        "customer_name",
        "username",
        "email",
        "phone",
        "phone_number",
        "mobile",
        "address",
        "street",
        "postcode",
        "zip",
        "date_of_birth",
        "dob",
        "birth_date",
        "birthdate",
        "notes",
        "note",
        "password",
        "passwd",
        "token",
        "secret",
        "authorization",
        "cookie",
        "api_key",
        "ip",
        "ip_address",
        "client_ip",
        "remote_addr",
        "x_forwarded_for",
        "http_x_forwarded_for",
        "http_authorization",
        "http_cookie",
        "sessionid",
        "csrftoken",
        # Identify a person's device, or carry whatever a caller typed into a URL.
        "user_agent",
        "http_user_agent",
        "query_string",
    }
)
_KEY_SUFFIXES = ("_password", "_secret", "_token", "_email", "_phone", "_address")

_PATTERNS = re.compile(
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"  # e-mail
    r"|\b(?!127\.|0\.0\.0\.0\b)(?:\d{1,3}\.){3}\d{1,3}\b"  # IPv4, not loopback/unspecified
    r"|\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\b"  # IPv6, full form
    r"|\b(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:?){1,6}\b"  # IPv6 with "::" (not ::1)
    r"|\+\d[\d ().-]{6,}\d"  # phone in international form
    r"|\bsf_[A-Za-z0-9_-]{20,}"  # stockflow API tokens
)

# Every pattern above needs one of these: most log values (ids, statuses, event names)
# have none and skip the full scan. Runs on every value of every log line.
_MAYBE = re.compile(r"[@.:+]|sf_")

# Every value of a query string, whatever its key: a name can hide under `?q=`, and the
# values are percent-encoded, out of reach of the patterns above. Keys stay readable.
_QUERY = re.compile(r"([?&][^=&#\s\"'<>]+=)[^&#\s\"'<>]*")

# `key: 'value'`, `"key": "value"`, `key='value'` (repr(), JSON, axes' log lines): the
# value goes when the key names personal data.
_QUOTED_VALUE = re.compile(
    r"""(["']?)\b([A-Za-z_][\w-]{0,40})\1(\s*[:=]\s*)(?:'[^'\n]*'|"[^"\n]*")"""
)


@functools.lru_cache(maxsize=4096)
def is_pii_key(key) -> bool:
    k = str(key).lower().replace("-", "_")
    return k in PII_KEYS or k.endswith(_KEY_SUFFIXES)


def _redact_quoted(match: re.Match) -> str:
    quote, key, sep = match.group(1, 2, 3)
    if not is_pii_key(key):
        return match.group(0)
    mark = match.group(0)[-1]  # the value's own quote character
    return f"{quote}{key}{quote}{sep}{mark}{REDACTED}{mark}"


def mask_text(text: str) -> str:
    # Cheap `in` checks first: the regexes only run on strings that could match.
    if "=" in text:
        if "?" in text or "&" in text:
            text = _QUERY.sub(r"\1" + REDACTED, text)
        if "'" in text or '"' in text:
            text = _QUOTED_VALUE.sub(_redact_quoted, text)
    elif ":" in text and ("'" in text or '"' in text):
        text = _QUOTED_VALUE.sub(_redact_quoted, text)
    return _PATTERNS.sub(REDACTED, text) if _MAYBE.search(text) else text


# Rendered as they are by the JSON renderer (orjson), nothing personal in them.
_PLAIN = frozenset(
    {int, float, bool, type(None), uuid.UUID, datetime.datetime, datetime.date, datetime.time}
)
_MAX_DEPTH = 12


def scrub(value, depth: int = 0):
    """A copy of `value` with personal data removed, at any depth and of any type."""
    if isinstance(value, str):
        return mask_text(value)
    if type(value) in _PLAIN:
        return value
    if depth > _MAX_DEPTH:
        return REDACTED  # never rendered unscrubbed, however deep
    if isinstance(value, dict):
        return {k: REDACTED if is_pii_key(k) else scrub(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(scrub(v, depth + 1) for v in value)
    if isinstance(value, (set, frozenset)):
        return [scrub(v, depth + 1) for v in value]
    if isinstance(value, Mapping):
        return scrub(dict(value), depth)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # orjson renders a dataclass as a dict of its fields: scrub them by key.
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return scrub(fields, depth)
    if isinstance(value, enum.Enum):
        return scrub(value.value, depth)
    # Anything else (an exception, bytes, a model, a Decimal) reaches the log as str().
    return mask_text(str(value))


_SAFE_KEYS = ("timestamp", "level", "logger")


def structlog_processor(logger, method_name, event_dict):
    safe = {k: event_dict.pop(k) for k in _SAFE_KEYS if k in event_dict}
    return {**safe, **scrub(event_dict)}
