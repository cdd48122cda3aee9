"""Keep personal data out of logs and Sentry events.

Keys that name personal data are redacted at any depth; in every string value,
e-mail addresses, IP addresses and international phone numbers are masked
(this also covers exception text rendered into a log line).
"""

import functools
import re

REDACTED = "[redacted]"

PII_KEYS = frozenset(
    {
        "name",
        "first_name",
        "last_name",
        "full_name",
        "customer_name",
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
    }
)
_KEY_SUFFIXES = ("_password", "_secret", "_token", "_email", "_phone", "_address")

_PATTERNS = re.compile(
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"  # e-mail
    r"|\b(?:\d{1,3}\.){3}\d{1,3}\b"  # IPv4
    r"|\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\b"  # IPv6, full form
    r"|\b(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:?){1,6}\b"  # IPv6 with "::"
    r"|\+\d[\d ().-]{6,}\d"  # phone in international form
    r"|\bsf_[A-Za-z0-9_-]{20,}"  # stockflow API tokens
)


# Every pattern above needs one of these: most log values (ids, statuses, event names)
# have none and skip the full scan. Runs on every value of every log line.
_MAYBE = re.compile(r"[@.:+]|sf_")


@functools.lru_cache(maxsize=4096)
def is_pii_key(key) -> bool:
    k = str(key).lower().replace("-", "_")
    return k in PII_KEYS or k.endswith(_KEY_SUFFIXES)


def mask_text(text: str) -> str:
    return _PATTERNS.sub(REDACTED, text) if _MAYBE.search(text) else text


def scrub(value, depth: int = 0):
    """A copy of `value` with personal data removed (dicts, lists, tuples, strings)."""
    if depth > 12:
        return value
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: REDACTED if is_pii_key(k) else scrub(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(scrub(v, depth + 1) for v in value)
    return value


_SAFE_KEYS = ("timestamp", "level", "logger")


def structlog_processor(logger, method_name, event_dict):
    safe = {k: event_dict.pop(k) for k in _SAFE_KEYS if k in event_dict}
    return {**safe, **scrub(event_dict)}
