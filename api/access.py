"""Scope checks and the audit trail, as decorators on the operations."""

import functools

from django.db import transaction

from stockflow.accounts.models import AuditEntry
from stockflow.platform import ids, sql
from stockflow.platform.errors import DomainError, ErrorCode


def _check_scope(request, scope: str) -> None:
    if not request.auth.allows(scope):
        raise DomainError(ErrorCode.FORBIDDEN, f"this token lacks the {scope!r} scope")


def scoped(scope: str):
    """The operation needs a token with `scope`; otherwise 403 and nothing runs."""

    def decorator(view):
        @functools.wraps(view)
        def wrapper(request, *args, **kwargs):
            _check_scope(request, scope)
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


def audited(action: str, scope: str, at_once=None):
    """Scope check plus one append-only audit row per request, accepted or rejected.

    `at_once(request, audit_row, **kwargs)`, if given, may answer the common case first
    in one autocommitted statement that also writes `audit_row(job)`; it returns None
    when the view must decide (in one transaction with its audit row, as below)."""

    def decorator(view):
        @functools.wraps(view)
        def wrapper(request, *args, **kwargs):
            sale_id = kwargs.get("sale_id")
            entry = AuditEntry(
                token_name=request.auth.name,
                action=action,
                request_id=request.request_id,
                sale_id=sale_id if ids.plausible(sale_id) else None,
            )

            def accepted_row(job):
                entry.outcome, entry.status_code, entry.job_id = "accepted", 202, job.pk
                return entry

            try:
                _check_scope(request, scope)
                if at_once is not None:
                    result = at_once(request, accepted_row, *args, **kwargs)
                    if result is not None:
                        return result
                # The audit row commits with what the request did, in one transaction.
                with transaction.atomic():
                    result = view(request, *args, **kwargs)
                    status, body = result.status_code, result.value
                    job = body.get("job") if isinstance(body, dict) else None
                    entry.outcome = "accepted" if job else "success"
                    entry.status_code = status
                    entry.job_id = job["id"] if job else None
                    sql.insert(entry)
            except DomainError as exc:
                entry.outcome, entry.status_code = exc.code, exc.http_status
                sql.insert(entry)  # after the rollback: refusals are audited too
                raise
            return result

        return wrapper

    return decorator
