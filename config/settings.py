"""stockflow settings: plain data read from the environment. Importing them starts
nothing: no server, no logging or tracing setup.

DATABASE_URL and REDIS_URL are required. In development the entry points that need
servers (manage.py, bin/*, the test suite) start stockflow's embedded PostgreSQL and
Redis first when they are unset (harness/embedded.py) and export their URLs; a process
that skipped that fails loudly on its first connection, not silently elsewhere.
Logging, tracing and Sentry are set up once per process by the entry point
(stockflow.observability.bootstrap).
"""

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url

from config import pooler
from config.env import env_bool, env_int, env_list, env_networks
from config.guards import check_production, proxy_ssl_header

BASE_DIR = Path(__file__).resolve().parent.parent
# Unset: sockets that cannot exist, so the first connection fails at once and says why.
UNSET_DATABASE_URL = "postgresql://postgres@%2Fnonexistent%2Fset-DATABASE_URL/stockflow"
UNSET_REDIS_URL = "unix:///nonexistent/set-REDIS_URL"

DEBUG = env_bool("DJANGO_DEBUG")
# production: HTTPS-only cookies, HSTS, SSL redirect; `manage.py check --deploy` passes.
PRODUCTION = os.environ.get("STOCKFLOW_ENV", "development") == "production"
if PRODUCTION:
    # Debug on, no secret key, a .env.example placeholder left, no hosts: refuse to start.
    check_production(os.environ)
# Unset (refused in production): a fixed key, for development and tests only.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or "django-insecure-dev-only-stockflow-key"
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "" if PRODUCTION else "*")

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.admin",
    "ninja",  # Swagger UI's JS and CSS served from our static files, not a CDN (/api/docs offline)
    "axes",  # admin/console login lockout
    "django_structlog",
    "stockflow.accounts",
    "stockflow.stock",
    "stockflow.leads",
    "api.console",
]

MIDDLEWARE = [
    "api.middleware.RequestIdMiddleware",
    "django_structlog.middlewares.RequestMiddleware",
    "api.middleware.MetricsMiddleware",
    "api.errors.JsonErrorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Console and admin: the database down is a 503 page, not a 500 (the API has its own).
    "api.console.unavailable.DatabaseUnavailableMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a lockout into its 429 answer
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or UNSET_DATABASE_URL,
        # One persistent connection per web thread / worker child. No health check before
        # reuse: it is a round trip (SELECT 1) per request and per task. A connection broken
        # under us (PostgreSQL restarted) fails its first statement instead: the API answers
        # 503 with Retry-After, a task retries it as transient, and Django closes the
        # connection at the end of that request or task (errors_occurred), so the next one
        # connects afresh.
        conn_max_age=env_int("DB_CONN_MAX_AGE", 300),
        conn_health_checks=False,
    )
}
DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = env_int("DB_CONNECT_TIMEOUT", 5)


# Bounded waits: no statement waits for a row lock, or runs, without limit. The web's are
# short (a held row answers 503 `busy` with Retry-After instead of holding a thread), and
# every Django process but these two gets them (the tests too). Worker processes swap in
# theirs (workers/signals.py, before the pool forks): longer, but below
# CELERY_TASK_SOFT_TIME_LIMIT, so a lock wait ends as a retried `lock_timeout`, never as
# SoftTimeLimitExceeded. manage.py (migrate, check_ledger on a big ledger) runs statements
# as long as they take (0: no limit) and waits a little longer for locks.
# idle_in_transaction_session_timeout: a web or worker host that vanishes mid-transaction
# (power, network: no FIN, so PostgreSQL never hears the client is gone) would hold its rows
# for hours, and every batch needing one of them would wait and fail; PostgreSQL ends such a
# session after this long instead (tests/system/test_multihost.py). Their transactions never
# idle on purpose; an operator's `manage.py shell` may.
DB_IDLE_IN_TRANSACTION_TIMEOUT_MS = env_int("DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", 10000)
DB_TIMEOUTS_BY_ROLE = {
    role: f"-c lock_timeout={lock_ms} -c statement_timeout={statement_ms}"
    f" -c idle_in_transaction_session_timeout={idle_ms}"
    for role, lock_ms, statement_ms, idle_ms in (
        (
            "web",
            env_int("DB_LOCK_TIMEOUT_MS", 1500),
            env_int("DB_STATEMENT_TIMEOUT_MS", 5000),
            DB_IDLE_IN_TRANSACTION_TIMEOUT_MS,
        ),
        (
            "worker",
            env_int("WORKER_DB_LOCK_TIMEOUT_MS", 5000),
            env_int("WORKER_DB_STATEMENT_TIMEOUT_MS", 30000),
            DB_IDLE_IN_TRANSACTION_TIMEOUT_MS,
        ),
        (
            "manage",
            env_int("MANAGE_DB_LOCK_TIMEOUT_MS", 10000),
            env_int("MANAGE_DB_STATEMENT_TIMEOUT_MS", 0),
            0,
        ),
    )
}
# client_connection_check_interval: a backend whose client died (a worker child killed at
# its hard time limit) ends its transaction within a second, even mid-statement, instead of
# holding its rows until the statement ends. DATABASE_URL's own `options`, then PGOPTIONS
# (which libpq would otherwise ignore), come last: they win.
DB_SESSION_OPTIONS_BY_ROLE = {
    role: " ".join(
        part
        for part in (
            timeouts,
            "-c client_connection_check_interval=1000",
            DATABASES["default"]["OPTIONS"].get("options", ""),
            os.environ.get("PGOPTIONS", ""),
        )
        if part
    )
    for role, timeouts in DB_TIMEOUTS_BY_ROLE.items()
}
DB_PROCESS_ROLE = "manage" if os.environ.get("STOCKFLOW_PROCESS") == "manage" else "web"
# DATABASE_POOLER=pgbouncer: DATABASE_URL is PgBouncer in transaction pooling mode
# (docs/pgbouncer.md). A server connection then serves other clients between our
# transactions: no session state. The role's session options are its PgBouncer pool's
# (config/pooler.py: one alias per role, whose connect_query SETs them), not a startup
# parameter PgBouncer would refuse; no server-side prepared statements (with server-side
# binding psycopg prepares from a statement's 5th run, on a server connection the next
# transaction may not get) nor WITH HOLD cursors (.iterator()). Unset: a direct
# connection, with the options as startup parameter.
DATABASE_POOLER = pooler.check_pooler(os.environ.get("DATABASE_POOLER", ""))
# What each role connects to: its PgBouncer alias behind the pooler (the worker switches to
# its own at celeryd_init, workers/signals.py), else the database.
DB_NAME_BY_ROLE = {
    role: pooler.alias(DATABASES["default"]["NAME"], role)
    if DATABASE_POOLER
    else DATABASES["default"]["NAME"]
    for role in DB_TIMEOUTS_BY_ROLE
}
DATABASES["default"]["NAME"] = DB_NAME_BY_ROLE[DB_PROCESS_ROLE]
if DATABASE_POOLER:
    DATABASES["default"]["OPTIONS"]["prepare_threshold"] = None
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = True
else:
    DATABASES["default"]["OPTIONS"]["options"] = DB_SESSION_OPTIONS_BY_ROLE[DB_PROCESS_ROLE]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL") or UNSET_REDIS_URL

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_TZ = True
USE_I18N = False
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / ".state" / "static"
# Admin and console assets served by the app itself (no build step; `collectstatic` in make run / the image).
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

APPEND_SLASH = False
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024  # JSON bodies here are small; refuse floods early

# --- security headers and cookies ---------------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True
# Believe X-Forwarded-Proto only when a TLS-terminating proxy that sets it is declared:
# otherwise any client could claim https itself.
SECURE_PROXY_SSL_HEADER = proxy_ssl_header(os.environ.get("SECURE_PROXY_SSL_HEADER", ""))
if PRODUCTION:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_REDIRECT_EXEMPT = [
        r"^healthz$",
        r"^readyz$",
        r"^metrics$",
    ]  # probes and scrapes speak plain HTTP inside
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

# --- admin and console login lockout (django-axes, counted in PostgreSQL) ----------------
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses a locked-out pair before any check
    "django.contrib.auth.backends.ModelBackend",
]
# Per username AND client address: per username alone anyone could lock staff out of the
# console during an incident; per address alone an office behind one NAT shares a budget.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("AXES_COOLOFF_MINUTES", 15))
AXES_RESET_ON_SUCCESS = True  # a typo or two before the right password starts afresh
# The lead form's rule: X-Forwarded-For only from TRUSTED_PROXIES.
AXES_CLIENT_IP_CALLABLE = "stockflow.leads.throttle.client_ip"
AXES_DISABLE_ACCESS_LOG = True  # failures only: no table of every staff login's address
# Operators unlock with manage.py (README); the admin would add three pages, two always empty.
AXES_ENABLE_ADMIN = False

# --- observability --------------------------------------------------------------------
# Logging is configured by stockflow.observability.bootstrap, once per process, not by Django.
LOGGING_CONFIG = None
DJANGO_STRUCTLOG_CELERY_ENABLED = True
# One line per task outcome (task_succeeded / task_failed, with the duration): task_started
# would add a line per job saying only that the outcome line is coming. (Periodic tasks
# that did nothing are quiet too: stockflow.observability.logging.quiet_success.)
DJANGO_STRUCTLOG_CELERY_TASK_START_LOG_LEVEL = 10  # logging.DEBUG
DJANGO_STRUCTLOG_IP_LOGGING_ENABLED = False  # an IP address is personal data
DJANGO_STRUCTLOG_TRUST_UPSTREAM_REQUEST_ID = True  # RequestIdMiddleware sanitized it first
DJANGO_STRUCTLOG_USER_ID_FIELD = None
# /metrics on the web port answers only to this bearer token (unset: always 401).
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
# A verified API token is trusted this long per process: a revocation reaches other processes within it.
API_TOKEN_CACHE_SECONDS = env_int("API_TOKEN_CACHE_SECONDS", 5)
# /api/docs (Swagger UI) only for logged-in staff: on by default in production.
API_DOCS_STAFF_ONLY = env_bool("API_DOCS_STAFF_ONLY", PRODUCTION)
# List endpoints (GET /api/jobs, /api/stock, /api/leads): rows per page, and the most a client may ask for.
API_PAGE_SIZE = env_int("API_PAGE_SIZE", 50)
API_MAX_PAGE_SIZE = env_int("API_MAX_PAGE_SIZE", 500)

# --- public lead form ------------------------------------------------------------------
LEADS_PER_MINUTE = env_int("LEADS_PER_MINUTE", 2)
LEADS_PER_HOUR = env_int("LEADS_PER_HOUR", 10)
# Only these proxies' X-Forwarded-For is believed (comma-separated addresses or CIDRs).
TRUSTED_PROXIES = env_networks("TRUSTED_PROXIES")

# --- jobs -------------------------------------------------------------------
# A queued job whose broker message may be lost is re-sent after this many seconds.
JOB_QUEUED_LEASE_SECONDS = env_int("JOB_QUEUED_LEASE_SECONDS", 30)
# A running job whose worker may be dead is re-sent after its lease expires.
JOB_RUNNING_LEASE_SECONDS = env_int("JOB_RUNNING_LEASE_SECONDS", 90)
# A job delivered more often than this (e.g. a poison message killing workers) fails for good.
JOB_MAX_ATTEMPTS = env_int("JOB_MAX_ATTEMPTS", 10)
JOB_RECONCILE_INTERVAL_SECONDS = env_int("JOB_RECONCILE_INTERVAL_SECONDS", 5)
# Transient faults: exponential backoff with full jitter, at most this many retries.
JOB_MAX_RETRIES = env_int("JOB_MAX_RETRIES", 5)
JOB_RETRY_BACKOFF_MAX_SECONDS = env_int("JOB_RETRY_BACKOFF_MAX_SECONDS", 30)
# sale.paid batches: a worker settles its own job plus up to JOB_BATCH_SIZE - 1 other
# queued PAID jobs (oldest first, SKIP LOCKED) in one transaction; 1 turns batching off.
JOB_BATCH_SIZE = env_int("JOB_BATCH_SIZE", 50)
# Routing (workers/routing.py): which queue a job's message goes to. `single`: one queue
# (CELERY_TASK_DEFAULT_QUEUE) for every job. `location`: a queue per location
# (stockflow.jobs.location.<id>). `hash`: JOB_SHARDS queues (stockflow.jobs.shard.<location
# id mod JOB_SHARDS>). Sharded, workers subscribe to some queues (WORKER_QUEUES), a batch
# holds jobs of one location only, and a flash sale at one location never queues another's
# jobs behind it.
JOB_ROUTING = os.environ.get("JOB_ROUTING", "single").strip().lower()
if JOB_ROUTING not in {"single", "location", "hash"}:
    raise ValueError(f"JOB_ROUTING must be single, location or hash, not {JOB_ROUTING!r}")
JOB_SHARDS = env_int("JOB_SHARDS", 4)
if JOB_SHARDS < 1:
    raise ValueError(f"JOB_SHARDS must be at least 1, not {JOB_SHARDS}")
# readyz: a worker must have sent a heartbeat within this many seconds.
WORKER_HEARTBEAT_MAX_AGE_SECONDS = env_int("WORKER_HEARTBEAT_MAX_AGE_SECONDS", 30)

# How a committed job reaches the broker: the domain calls this, and never imports Celery.
JOB_PUBLISHER = "workers.publish.enqueue"

# --- Celery (read by workers/celery.py with namespace CELERY) -------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# PostgreSQL's Job table holds results; a result backend would be a second, weaker copy.
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
# At-least-once delivery: ack after the task body, requeue if the child dies, take one at a time.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("CELERY_WORKER_PREFETCH_MULTIPLIER", 1)
# Celery's Django fixup closes every DB connection around each task unless this is set
# (a new PostgreSQL connection per job: 3337 sessions in one bench run instead of 35).
# Django's DB_CONN_MAX_AGE and health checks apply per task instead (workers/signals.py).
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1000)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 60)
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 45)
# Redis redelivers an unacked message after this long. It must exceed the longest
# time a message can legitimately stay unacked: the hard time limit plus the longest
# retry countdown (retries are ETA messages held unacked by the worker).
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 300),
    "socket_timeout": 5,
    "socket_connect_timeout": 5,
    "health_check_interval": 10,
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Broker errors on publish: bounded retry with backoff inside kombu; the reconciler
# covers what is still lost.
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 3,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 1,
}
# Events for Flower and celery-exporter (task-sent from the publisher, task-* from workers).
CELERY_TASK_SEND_SENT_EVENT = env_bool("CELERY_TASK_SEND_SENT_EVENT", True)
CELERY_WORKER_SEND_TASK_EVENTS = env_bool("CELERY_WORKER_SEND_TASK_EVENTS", True)
CELERY_TASK_TRACK_STARTED = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Periodic work has its own queue, consumed by every worker (bin/worker's default -Q):
# behind a backlog of jobs on the default queue it would wait past its expiry and never run,
# and a job whose message was lost would wait for the whole backlog. Each run expires after
# one interval: by then the next one is on its way.
CELERY_TASK_DEFAULT_QUEUE = "celery"
PERIODIC_TASK_QUEUE = "stockflow.periodic"
# RabbitMQ only (workers/rabbitmq.py): a message delivered this many times without an ack
# is dead-lettered to the stockflow.dead-letter queue.
BROKER_DELIVERY_LIMIT = env_int("BROKER_DELIVERY_LIMIT", 20)
CELERY_TASK_ROUTES = {
    "stockflow.reconcile_jobs": {"queue": PERIODIC_TASK_QUEUE},
    "stockflow.check_ledger": {"queue": PERIODIC_TASK_QUEUE},
}
LEDGER_CHECK_INTERVAL_SECONDS = env_int("LEDGER_CHECK_INTERVAL_SECONDS", 300)
CELERY_BEAT_SCHEDULE = {
    "reconcile-jobs": {
        "task": "stockflow.reconcile_jobs",
        "schedule": float(JOB_RECONCILE_INTERVAL_SECONDS),
        "options": {"expires": float(JOB_RECONCILE_INTERVAL_SECONDS)},
    },
    "check-ledger": {
        "task": "stockflow.check_ledger",
        "schedule": float(LEDGER_CHECK_INTERVAL_SECONDS),
        "options": {"expires": float(LEDGER_CHECK_INTERVAL_SECONDS)},
    },
}
# A message the worker cannot decode is set aside here (workers/poison.py), the newest
# BROKER_DEAD_LETTER_MAX_LENGTH kept (0: counted and logged only), and never stops the worker.
CELERY_WORKER_CONSUMER = "workers.consumer:Consumer"
BROKER_DEAD_LETTER_KEY = "stockflow:dead-letter"
BROKER_DEAD_LETTER_MAX_LENGTH = env_int("BROKER_DEAD_LETTER_MAX_LENGTH", 1000)
