"""Once per process, by its entry point: tracing, logging, Sentry. Settings never do it.

web     config/wsgi.py, before Django builds its handler
worker  workers/signals.py (celeryd_init), in the main process before the pool forks
beat    workers/signals.py (beat_init)
manage  manage.py and the test suite: logging and tracing, no Sentry
"""

from . import logging, sentry, tracing

ROLES = ("web", "worker", "beat", "manage")
_role: str | None = None


def bootstrap(role: str) -> None:
    global _role
    if role not in ROLES:
        raise ValueError(f"unknown process role {role!r}; one of {', '.join(ROLES)}")
    if _role is not None:  # a second call (celeryd_init after setup_logging, …) changes nothing
        return
    _role = role
    tracing.init()  # only when OTEL_EXPORTER_OTLP_ENDPOINT is set; before logging (trace ids)
    logging.configure()
    if role == "web":
        tracing.instrument_django()  # before the handler loads the middleware chain
        sentry.init()
    elif role in ("worker", "beat"):
        sentry.init(django=False)
