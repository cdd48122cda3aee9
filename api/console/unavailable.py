"""The console and the admin while the database is down: a small 503 page with
Retry-After, as the API answers 503, instead of Django's 500 page, an `exceptions`
count and a Sentry event for an outage that /readyz already reports."""

import structlog
from django import db
from django.http import HttpResponse
from django.template.loader import render_to_string

logger = structlog.get_logger(__name__)

PREFIXES = ("/console/", "/admin/")
RETRY_AFTER_SECONDS = 5


class DatabaseUnavailableMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, db.OperationalError | db.InterfaceError):
            return None
        if not request.path.startswith(PREFIXES):
            return None  # the API answers its own 503 (api/api.py)
        logger.warning("http.database_unavailable", exception_type=type(exception).__name__)
        # Rendered without the request: no context processor may touch the database.
        body = render_to_string(
            "console/unavailable.html",
            {
                "retry_after": RETRY_AFTER_SECONDS,
                "request_id": getattr(request, "request_id", ""),
            },
        )
        return HttpResponse(
            body,
            status=503,
            content_type="text/html; charset=utf-8",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
