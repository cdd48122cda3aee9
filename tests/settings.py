"""Test settings: the real stack, isolated from a running dev system.

Tests use the test database pytest-django creates (test_<name>) and their own Redis
database number, so `make test` never touches what `make run` is serving.
"""

import json
import os
import re

import dj_database_url

from config import pooler
from config.settings import *  # noqa: F403
from config.settings import (
    DATABASE_POOLER,
    DATABASES,
    DB_PROCESS_ROLE,
    DB_SESSION_OPTIONS_BY_ROLE,
    REDIS_URL,
)

TEST_REDIS_DB = int(os.environ.get("STOCKFLOW_TEST_REDIS_DB", "9"))
REDIS_URL = re.sub(r"(/\d*)?$", f"/{TEST_REDIS_DB}", REDIS_URL.split("?")[0], count=1)
# The suite's broker is its Redis db; tests/integration/test_rabbitmq.py points the web and
# worker processes it starts at a RabbitMQ vhost of its own instead.
CELERY_BROKER_URL = os.environ.get("STOCKFLOW_TEST_BROKER_URL") or REDIS_URL

# pytest-django empties the tables between transactional tests with TRUNCATE, which the
# append-only tables refuse unless the session allows it (stock migration 0002).
ALLOW_TRUNCATE = "-c stockflow.allow_truncate=on"
DB_SESSION_OPTIONS_BY_ROLE = {
    role: f"{options} {ALLOW_TRUNCATE}".strip()
    for role, options in DB_SESSION_OPTIONS_BY_ROLE.items()
}
_db = DATABASES["default"]
_options = _db.setdefault("OPTIONS", {})

# The database's own name, not PgBouncer's alias for this process's role (config/pooler.py).
_name = pooler.database_of(_db["NAME"], DB_PROCESS_ROLE) if DATABASE_POOLER else _db["NAME"]
# Behind PgBouncer (`make test-pgbouncer`, harness/pgbouncer.py) a pool carries the session
# options the harness gave it. A process asking for others (a test's worker started with
# PGOPTIONS or its own WORKER_DB_LOCK_TIMEOUT_MS) cannot share that pool: it connects
# directly to PostgreSQL (DATABASE_DIRECT_URL) instead, with its options as without one.
if (
    DATABASE_POOLER
    and json.loads(os.environ.get("PGBOUNCER_SESSION_OPTIONS") or "{}")
    != DB_SESSION_OPTIONS_BY_ROLE
):
    DATABASE_POOLER = ""
    _direct = dj_database_url.parse(os.environ["DATABASE_DIRECT_URL"])
    _db.update({key: _direct[key] for key in ("USER", "PASSWORD", "HOST", "PORT")})
    _db["DISABLE_SERVER_SIDE_CURSORS"] = False
    _options.pop("prepare_threshold", None)

_db["TEST"] = {"NAME": "test_" + _name}
if os.environ.get("STOCKFLOW_USE_TEST_DATABASE"):
    # Worker and web subprocesses started by the tests talk to the test database.
    _name = _db["TEST"]["NAME"]
DB_NAME_BY_ROLE = {
    role: pooler.alias(_name, role) if DATABASE_POOLER else _name for role in pooler.ROLES
}
_db["NAME"] = DB_NAME_BY_ROLE[DB_PROCESS_ROLE]
if not DATABASE_POOLER:
    _options["options"] = DB_SESSION_OPTIONS_BY_ROLE[DB_PROCESS_ROLE]

# Fast leases so the reconciler's recovery shows within a test's patience.
JOB_QUEUED_LEASE_SECONDS = int(os.environ.get("JOB_QUEUED_LEASE_SECONDS", "5"))
JOB_RUNNING_LEASE_SECONDS = int(os.environ.get("JOB_RUNNING_LEASE_SECONDS", "10"))

METRICS_TOKEN = "test-metrics-token"
