"""HTTP metrics middleware: labelled by the URL route template, never the raw path."""

import time

from . import metrics

# Clients choose the method string: anything unexpected is folded into one label value.
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


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
