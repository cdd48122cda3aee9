"""Which clock the console shows times on: a location's time zone (read safely through
stockflow.platform.timezones: a bad stored name reads as UTC), with UTC on hover.

The overview and the job list use the zone chosen with `?tz=<location code>` (kept in
the session), else the zone every location shares, else UTC; a job's page uses its
sale's location."""

import datetime
from dataclasses import dataclass, field

from stockflow.platform import timezones
from stockflow.stock.models import Location

SESSION_KEY = "console_tz"
UTC = "UTC"


@dataclass(frozen=True)
class Zone:
    name: str  # an IANA name, "UTC" included
    location: str | None = None  # the location code it was taken from
    choices: list[tuple[str, str]] = field(default_factory=list)  # (location code, zone name)

    @property
    def tz(self) -> datetime.tzinfo:
        return timezones.zone(self.name)


def of_location(location: Location) -> Zone:
    name = location.timezone if timezones.is_valid(location.timezone) else UTC
    return Zone(name=name, location=location.code)


def chosen(request) -> Zone:
    """One query (the locations, a small table)."""
    choices = list(Location.objects.order_by("code").values_list("code", "timezone"))
    zones = dict(choices)
    wanted = request.GET.get("tz")
    if wanted == UTC or wanted in zones:
        request.session[SESSION_KEY] = wanted
    code = request.session.get(SESSION_KEY)
    if code not in zones and code != UTC:
        shared = {name for _, name in choices}
        code = choices[0][0] if len(shared) == 1 else UTC
    if code == UTC:
        return Zone(name=UTC, choices=choices)
    name = zones[code] if timezones.is_valid(zones[code]) else UTC
    return Zone(name=name, location=code, choices=choices)
