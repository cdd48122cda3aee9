"""The console's operator actions on a job (retry, re-send): the same domain actions as
`POST /api/jobs/{id}/retry|resend`, audited the same way, with the staff member as actor."""

from dataclasses import dataclass

from django.db import transaction

from stockflow.accounts import audit
from stockflow.platform.errors import DomainError
from stockflow.stock.services import operations


@dataclass(frozen=True)
class Action:
    audit_name: str
    run: object  # job id -> Job, raising DomainError when refused
    done: str  # what the operator is told, after "Job <id> "


ACTIONS = {
    "retry": Action("job.retry", operations.retry, "queued again: a new attempt of the same job"),
    "resend": Action("job.resend", operations.resend, "re-sent to the workers"),
}


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str
    found: bool = True  # False: no such job (nothing to go back to)


def perform(name: str, job_id, *, username: str, request_id: str) -> Outcome:
    """Run the action and write its audit row; a refusal is an outcome, never an exception."""
    action = ACTIONS[name]

    def row(outcome: str, status_code: int):
        audit.record(
            actor=audit.staff_actor(username),
            action=action.audit_name,
            request_id=request_id,
            outcome=outcome,
            status_code=status_code,
            job_id=job_id,
        )

    try:
        # The audit row commits with the action, as the API's does.
        with transaction.atomic():
            job = action.run(job_id)
            row("accepted", 202)
    except DomainError as exc:
        row(exc.code.value, exc.http_status)  # after the rollback: refusals are audited too
        return Outcome(False, exc.message, found=exc.code != "not_found")
    return Outcome(True, f"Job {job.pk} {action.done}.")
