from api.observability import sentry

from . import request_context


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
