import structlog

from stockflow.observability import metrics

from . import throttle
from .models import Lead

logger = structlog.get_logger("stockflow.domain")


def check_throttle(request) -> throttle.Verdict:
    ip = throttle.client_ip(request)
    client = throttle.client_hash(ip)
    request.lead_client = client  # stored with the lead: the client itself
    # Counted per budget subject: an IPv6 client's whole /64 shares one budget.
    verdict = throttle.hit(throttle.client_hash(throttle.budget_subject(ip)))
    if not verdict.allowed:
        metrics.LEADS_REQUESTS.labels("throttled").inc()
        metrics.LEADS_THROTTLED.labels(verdict.scope).inc()
        metrics.LEADS_429.inc()
        logger.warning(
            "public.lead.throttled",
            scope=verdict.scope,
            client_hash=client,
            retry_after=verdict.retry_after,
        )
    return verdict


def create_lead(client: str, name: str, email: str, phone: str, message: str, source: str) -> Lead:
    lead = Lead.objects.create(
        name=name, email=email, phone=phone, message=message, source=source, client_hash=client
    )
    metrics.LEADS_REQUESTS.labels("created").inc()
    logger.info(
        "public.lead.created",
        lead_id=lead.pk,
        source=source,
        client_hash=client,
        has_phone=bool(phone),
        message_length=len(message),
    )
    return lead
