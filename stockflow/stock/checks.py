"""System checks on what the database holds (tag `database`: they run on
`manage.py check --database default`, and before `migrate`)."""

from django.core import checks
from django.db import DatabaseError

from stockflow.platform import timezones

from .models import Location


def stored_timezones_are_valid(app_configs=None, databases=None, **kwargs) -> list:
    """Every location's time zone is one zoneinfo knows. The admin refuses a bad one, but
    rows saved before that validation existed, or written by SQL, may still hold one:
    their dates are reckoned in UTC (stockflow.platform.timezones) until fixed here."""
    errors = []
    for alias in databases or ():
        try:
            rows = list(Location.objects.using(alias).values_list("pk", "code", "timezone"))
        except DatabaseError:
            continue  # not migrated yet (or unreachable): nothing stored to check
        errors += [
            checks.Error(
                f"location {code!r} (id {pk}) has time zone {tz!r}, which zoneinfo does not "
                "know; its dates are reckoned in UTC until this is fixed",
                hint="Set an IANA name (e.g. Europe/Paris) in the admin: /admin/stock/location/",
                obj=f"{Location._meta.label}:{pk}",
                id="stock.E001",
            )
            for pk, code, tz in rows
            if not timezones.is_valid(tz)
        ]
    return errors
