"""Read-only figures of the stock app that other layers show (the web's /metrics)."""

from django.db import connection

from stockflow.platform.sql import in_list

from .models import Job

# One query on the partial index of unfinished jobs.
_BACKLOG = f"""
    SELECT status, COUNT(*), EXTRACT(EPOCH FROM now() - MIN(created_at)) FROM {Job._meta.db_table}
    WHERE status IN {in_list(Job.UNFINISHED)} GROUP BY status"""


def job_backlog() -> tuple[dict[str, int], float]:
    """({status: jobs} for every unfinished status, in order, zeros included; age in
    seconds of the oldest queued job, 0 if none)."""
    with connection.cursor() as cursor:
        cursor.execute(_BACKLOG)
        rows = {status: (count, age) for status, count, age in cursor.fetchall()}
    counts = {status.value: rows.get(status, (0, None))[0] for status in Job.UNFINISHED}
    return counts, float(rows.get(Job.Status.QUEUED, (0, 0))[1] or 0)
