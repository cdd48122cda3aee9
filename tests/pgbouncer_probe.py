"""What a real process sees of its database session, for tests/integration/test_pgbouncer.py:
a WSGI app (stockflow's, plus GET /_probe/session) that gunicorn serves with bin/web's
config, and a Celery task a `bin/worker --include tests.pgbouncer_probe` runs in a pool
child. Both answer with the same session() of their own Django connection."""

import json
from pathlib import Path

from django.db import connection

from workers.celery import app

SETTINGS = (
    "lock_timeout",
    "statement_timeout",
    "client_connection_check_interval",
    "stockflow.allow_truncate",
)
PROBE_PATH = "/_probe/session"
TASK = "tests.pgbouncer_probe.session"


def session() -> dict:
    """This process's session settings as PostgreSQL runs them, and where it connects."""
    out = {}
    with connection.cursor() as cursor:
        for name in SETTINGS:
            cursor.execute("SELECT current_setting(%s, true)", [name])
            out[name] = cursor.fetchone()[0]
        cursor.execute("SELECT current_database()")
        out["database"] = cursor.fetchone()[0]
    out["connects_to"] = {k: connection.settings_dict[k] for k in ("NAME", "HOST", "PORT")}
    return out


@app.task(name=TASK)
def session_task(path: str) -> None:
    Path(path).write_text(json.dumps(session()))


_django = None


def application(environ, start_response):
    global _django
    if _django is None:  # config.wsgi bootstraps the web process: in gunicorn, not the worker
        from config.wsgi import application as _django
    if environ.get("PATH_INFO") == PROBE_PATH:
        body = json.dumps(session()).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    return _django(environ, start_response)
