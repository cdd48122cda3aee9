"""Anonymous endpoints: the public lead form."""

import pydantic
from django.http import HttpRequest
from ninja import Router
from ninja.errors import ValidationError
from ninja.responses import Status

from stockflow.leads import services as leads
from stockflow.observability import metrics
from stockflow.platform.errors import DomainError, ErrorCode

from .parser import BodyRefused, StrictParser
from .schemas import ErrorOut, LeadCreated, LeadIn

router = Router(auth=None)

_BODY = {"content": {"application/json": {"schema": LeadIn.model_json_schema()}}, "required": True}


@router.post(
    "/leads",
    response={
        201: LeadCreated,
        400: ErrorOut,
        415: ErrorOut,
        422: ErrorOut,
        429: ErrorOut,
        503: ErrorOut,
    },
    tags=["public"],
    openapi_extra={"requestBody": _BODY},
    summary="Anonymous contact form; throttled per client (2/min, 10/hour)",
)
def create_lead(request: HttpRequest):
    try:
        return _create_lead(request)
    except (DomainError, ValidationError):
        raise  # the caller's doing: counted as throttled / invalid
    except Exception:
        # The server's doing (database or Redis down, a bug): the availability SLI's errors.
        metrics.LEADS_REQUESTS.labels("error").inc()
        raise


def _create_lead(request: HttpRequest):
    # Throttle before parsing: malformed floods spend the same budget as valid ones.
    verdict = leads.check_throttle(request)
    if not verdict.allowed:
        raise DomainError(
            ErrorCode.THROTTLED,
            f"too many submissions; retry in {verdict.retry_after}s",
            details={"scope": verdict.scope, "retry_after": verdict.retry_after},
        )
    try:
        body = LeadIn.model_validate(StrictParser().parse_body(request))
    except pydantic.ValidationError as exc:
        metrics.LEADS_REQUESTS.labels("invalid").inc()
        raise ValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None
    except ValueError as exc:  # not JSON, NUL characters, nested too deeply
        metrics.LEADS_REQUESTS.labels("invalid").inc()
        message = str(exc) if isinstance(exc, BodyRefused) else "body is not valid JSON"
        raise DomainError(ErrorCode.MALFORMED, message) from None
    except DomainError:  # not sent as JSON (415)
        metrics.LEADS_REQUESTS.labels("invalid").inc()
        raise
    lead = leads.create_lead(
        request.lead_client, body.name, body.email, body.phone or "", body.message, body.source
    )
    return Status(201, {"id": lead.pk, "status": "received"})
