"""The web's own middleware: the request id on every request and response, and HTTP
metrics labelled by the URL route template, never the raw path."""

import time

from stockflow.observability import metrics, sentry
from stockflow.platform import request_context

# Clients choose the method string: anything unexpected is folded into one label value.
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class RequestIdMiddleware:
    """Accept a sane X-Request-ID or mint one, and echo it on the response.

    Runs before django-structlog's RequestMiddleware, which trusts the (now
    sanitized) header and binds it into every log line of the request."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request_id = request_context.sanitize(request.META.get("HTTP_X_REQUEST_ID"))
        request.META["HTTP_X_REQUEST_ID"] = request_id
        request.request_id = request_id
        with sentry.request_scope(request_id, request.method, request.path):
            response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response


class MetricsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = "/" + match.route if match is not None and match.route else "<unmatched>"
        if route == "/metrics":
            return response  # scrapes would dominate the counts
        method = request.method if request.method in _METHODS else "other"
        metrics.HTTP_DURATION.labels(route, method).observe(time.perf_counter() - started)
        metrics.HTTP_REQUESTS.labels(route, method, str(response.status_code)).inc()
        return response

    def process_exception(self, request, exception):
        metrics.EXCEPTIONS.labels(type(exception).__name__, "web").inc()
