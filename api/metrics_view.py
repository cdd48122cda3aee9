"""GET /metrics: the process metrics, then the scrape-time gauges (job backlog and the
last ledger check's verdict, read from the stock app)."""

import contextlib
import hmac

from django.conf import settings
from django.http import HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from stockflow.observability import exposition
from stockflow.stock import invariants, selectors

_scrape_time = exposition.scrape_time_registry(
    exposition.ScrapeTimeCollector(
        backlog=selectors.job_backlog, ledger_verdict=invariants.last_verdict
    )
)


def metrics_view(request):
    """GET /metrics with `Authorization: Bearer $METRICS_TOKEN`; refused when no token is configured."""
    expected = settings.METRICS_TOKEN
    # Exactly `Bearer <token>` (the scheme case-insensitive, as RFC 7235 has it): a bare
    # token, or one under another scheme, is refused.
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if (
        not expected
        or scheme.lower() != "bearer"
        or not hmac.compare_digest(given.encode(), expected.encode())
    ):
        return HttpResponse(
            "metrics need a bearer token (METRICS_TOKEN)\n",
            status=401,
            content_type="text/plain",
            headers={"WWW-Authenticate": "Bearer"},
        )
    body = generate_latest(exposition.process_registry())
    # The database or Redis is down: still expose the process metrics.
    with contextlib.suppress(Exception):
        body += generate_latest(_scrape_time)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
