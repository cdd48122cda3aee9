"""Audit rows for actions taken outside the token-authenticated API: a staff member in
the console. The API writes its rows in `api/access.py` (`audited`); both land in the
same append-only table, told apart by the actor's name."""

from stockflow.platform import sql

from .models import AuditEntry

STAFF_PREFIX = "staff:"


def staff_actor(username: str) -> str:
    """The `token_name` of a console action: `staff:<username>` (no token was used)."""
    return (STAFF_PREFIX + username)[: AuditEntry._meta.get_field("token_name").max_length]


def record(
    *,
    actor: str,
    action: str,
    request_id: str,
    outcome: str,
    status_code: int,
    job_id=None,
    sale_id: int | None = None,
) -> AuditEntry:
    """One row, in one statement (inside the caller's transaction, if any)."""
    return sql.insert(
        AuditEntry(
            token_name=actor,
            action=action,
            request_id=request_id,
            outcome=outcome,
            status_code=status_code,
            job_id=job_id,
            sale_id=sale_id,
        )
    )
