"""Location time zones: names checked against the IANA database (zoneinfo), and a zone for
every stored name, even a bad one. A location's calendar decides what has expired; a name
zoneinfo does not know (saved before validation existed, or written by SQL) must not turn
every stock read and every paid job at that location into an error: such a location is
reckoned in UTC, with a warning, until someone fixes it (`manage.py check --database
default` names it)."""

import datetime
import functools
import zoneinfo

import structlog
from django.core.exceptions import ValidationError

logger = structlog.get_logger(__name__)

FALLBACK = datetime.UTC


def is_valid(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        # Unknown name, or not a zone name at all ("", "../x", a directory such as "America").
        return False
    return True


def validate_timezone(name: str) -> None:
    """Model field validator (the admin's forms run it)."""
    if not is_valid(name):
        raise ValidationError(
            "%(name)r is not a time zone of the IANA database (e.g. Europe/Paris, UTC)",
            code="invalid_timezone",
            params={"name": name},
        )


@functools.lru_cache(maxsize=256)
def zone(name: str) -> datetime.tzinfo:
    """The zone of this name; UTC for a name zoneinfo does not know (logged once per process)."""
    if is_valid(name):
        return zoneinfo.ZoneInfo(name)
    logger.warning(
        "location.timezone_invalid",
        timezone=name,
        fallback="UTC",
        reason="not in the IANA time zone database; dates at this location use UTC until fixed",
    )
    return FALLBACK
