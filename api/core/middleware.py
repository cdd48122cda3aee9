from . import request_context


class RequestIdMiddleware:
    """Accept a sane X-Request-ID or mint one; bind it for logs and echo it back."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request_id = request_context.sanitize(request.headers.get("X-Request-ID"))
        request.request_id = request_id
        request_context.structlog.contextvars.clear_contextvars()
        request_context.bind(request_id=request_id)
        response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response
