"""Every Prometheus metric stockflow defines, in one place.

Labels are bounded by construction: routes are URL *templates*, statuses and
results come from fixed enumerations (stockflow.platform.errors.ErrorCode, Sale.Status,
workers.transient.REASONS), task names from the task registry. Never an id,
email or raw path.

Web and worker both run several processes; with PROMETHEUS_MULTIPROC_DIR set
(bin/web, bin/worker) values are shared through files and summed at scrape time.
"""

from prometheus_client import Counter, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# A latency SLO's threshold must be a bucket boundary: the SLI is then an exact ratio
# (observations above le=<threshold> / all) instead of one measured at a neighbouring bucket.
# SPEC §5: stock consume p95 < 500 ms (0.5), refund p95 < 800 ms (0.8).
# tests/integration/test_monitoring.py checks every le="..." the rules use against these.
STOCK_CONSUME_BUCKETS = LATENCY_BUCKETS  # 0.5 is already a boundary
REFUND_BUCKETS = tuple(sorted({*LATENCY_BUCKETS, 0.8}))

# --- HTTP (web) ----------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests answered, by route template, method and status code.",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency by route template and method.",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)
EXCEPTIONS = Counter(
    "exceptions_total",
    "Unhandled exceptions, by exception class and where they surfaced (web|worker).",
    ["exception_type", "location"],
)

# --- sales (seed flow 1) ---------------------------------------------------------------
SALES_TRANSITION = Counter(
    "sales_transition_total",
    "Sale status transitions requested, by from/to status and result (accepted|success|<error code>).",
    ["from_status", "to_status", "result"],
)
STOCK_CONSUME = Counter(
    "sales_paid_stock_consume_total",
    "sale.paid jobs finished, by result (success|idempotent|insufficient_stock|expired_batch|invalid_transition|error).",
    ["result"],
)
STOCK_CONSUME_DURATION = Histogram(
    "sales_paid_stock_consume_duration_seconds",
    "Time to lock, allocate FEFO and write the moves of one sale.paid job attempt.",
    buckets=STOCK_CONSUME_BUCKETS,
)

# --- refunds (seed flow 2) ---------------------------------------------------------------
REFUNDS = Counter(
    "sale_refunds_total",
    "Refunds finished (or refused at the API), by type (full|partial) and result.",
    ["type", "result"],
)
REFUND_DURATION = Histogram(
    "sale_refund_duration_seconds",
    "Time to apply one sale.refund job attempt.",
    buckets=REFUND_BUCKETS,
)
REFUND_LINES = Counter("sale_refund_lines_total", "Refund lines processed, by result.", ["result"])
OVER_REFUND_ATTEMPTS = Counter(
    "sale_refund_over_refund_attempts_total", "Refunds blocked because they exceed what was sold."
)
IDEMPOTENCY_CONFLICTS = Counter(
    "sale_refund_idempotency_conflicts_total",
    "Idempotency-Key reused with a different request body.",
)
REFUND_MOVES = Counter(
    "sale_refund_stock_moves_created_total",
    "REFUND_IN stock moves written, by refund type.",
    ["type"],
)
REFUND_ROLLBACKS = Counter(
    "sale_refund_rollback_total",
    "Refund transactions rolled back, by reason (error code).",
    ["reason"],
)

# --- jobs and tasks (worker) ---------------------------------------------------------------
JOBS_FINISHED = Counter(
    "stockflow_jobs_finished_total",
    "Jobs that reached a terminal status, by kind, status and error code.",
    ["kind", "status", "code"],
)
JOB_BATCH_SIZE = Histogram(
    "stockflow_job_batch_size",
    "Jobs settled together in one worker transaction (sale.paid batches).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
)
JOB_BATCH_DURATION = Histogram(
    "stockflow_job_batch_duration_seconds",
    "Time to settle one batch of jobs: locks, allocation, writes, commit.",
    buckets=LATENCY_BUCKETS,
)
TASK_STARTED = Counter(
    "celery_task_attempts_total", "Task executions started in a worker child.", ["task"]
)
TASK_OUTCOMES = Counter(
    "celery_task_outcomes_total",
    "Task executions ended, by outcome (succeeded|failed|retried).",
    ["task", "outcome"],
)
TASK_RUNTIME = Histogram(
    "celery_task_duration_seconds",
    "Task execution time in the worker, by outcome.",
    ["task", "outcome"],
    buckets=LATENCY_BUCKETS,
)
TASK_QUEUE_WAIT = Histogram(
    "celery_task_queue_wait_seconds",
    "Time from publish to execution start (from the published_at header).",
    ["task"],
    buckets=WAIT_BUCKETS,
)
TASK_RETRIES = Counter(
    "celery_task_retries_total",
    "Task retries scheduled, by reason (deadlock|serialization|db_unavailable|broker|other).",
    ["task", "reason"],
)
MESSAGES_REJECTED = Counter(
    "celery_messages_rejected_total",
    "Broker messages a worker could not run and set aside (dead-letter list), by reason (undecodable|malformed|unknown_task|invalid_task).",
    ["reason"],
)

# --- public leads (seed flow 3, web) --------------------------------------------------------
LEADS_REQUESTS = Counter(
    "public_leads_requests_total",
    "Public lead submissions, by result (created|invalid|throttled|error).",
    ["result"],
)
LEADS_THROTTLED = Counter(
    "public_leads_throttled_total",
    "Lead submissions throttled, by window (minute|hour).",
    ["scope"],
)
LEADS_429 = Counter("public_leads_429_total", "429 answers sent by the public lead form.")
