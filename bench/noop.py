"""The floor's no-op task, registered on stockflow's own Celery app.

The bench starts the worker with `bin/worker -I bench.noop` (celery's --include), so the
task runs in the same prefork pool, with the same broker, acks_late / prefetch settings
and the same worker signal handlers (metrics, structlog context) as `stockflow.run_job`.
"""

from workers.celery import app

NOOP_TASK = "bench.noop"


@app.task(name=NOOP_TASK)
def noop():
    return None
