"""Test settings: the real stack, isolated from a running dev system.

Tests use the test database pytest-django creates (test_<name>) and their own Redis
database number, so `make test` never touches what `make run` is serving.
"""

import os
import re

from config.settings import *  # noqa: F403
from config.settings import DATABASES, REDIS_URL

TEST_REDIS_DB = int(os.environ.get("STOCKFLOW_TEST_REDIS_DB", "9"))
REDIS_URL = re.sub(r"(/\d*)?$", f"/{TEST_REDIS_DB}", REDIS_URL.split("?")[0], count=1)
# The suite's broker is its Redis db; tests/integration/test_rabbitmq.py points the web and
# worker processes it starts at a RabbitMQ vhost of its own instead.
CELERY_BROKER_URL = os.environ.get("STOCKFLOW_TEST_BROKER_URL") or REDIS_URL

DATABASES["default"]["TEST"] = {"NAME": "test_" + DATABASES["default"]["NAME"]}
if os.environ.get("STOCKFLOW_USE_TEST_DATABASE"):
    # Worker and web subprocesses started by the tests talk to the test database.
    DATABASES["default"]["NAME"] = DATABASES["default"]["TEST"]["NAME"]

# Fast leases so the reconciler's recovery shows within a test's patience.
JOB_QUEUED_LEASE_SECONDS = int(os.environ.get("JOB_QUEUED_LEASE_SECONDS", "5"))
JOB_RUNNING_LEASE_SECONDS = int(os.environ.get("JOB_RUNNING_LEASE_SECONDS", "10"))

METRICS_TOKEN = "test-metrics-token"

# pytest-django empties the tables between transactional tests with TRUNCATE, which the
# append-only tables refuse unless the session allows it (stock migration 0002).
_options = DATABASES["default"].setdefault("OPTIONS", {})
_options["options"] = f"{_options.get('options', '')} -c stockflow.allow_truncate=on".strip()
