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


def jobs(
    *,
    status: str | None = None,
    kind: str | None = None,
    error_code: str | None = None,
    sale_id: int | None = None,
    request_id: str | None = None,
    created_after=None,
    created_before=None,
):
    """Jobs matching every filter given (unordered: the caller's pagination orders)."""
    found = Job.objects.all()
    if status:
        found = found.filter(status=status)
    if kind:
        found = found.filter(kind=kind)
    if error_code:
        found = found.filter(error_code=error_code)
    if sale_id is not None:
        found = found.filter(sale_id=sale_id)
    if request_id:
        found = found.filter(request_id=request_id)
    if created_after is not None:
        found = found.filter(created_at__gt=created_after)
    if created_before is not None:
        found = found.filter(created_at__lt=created_before)
    return found
