"""The one JSON error shape: {"error": {"code", "message", "request_id"}}."""

from django.http import JsonResponse

from stockflow.platform.errors import HTTP_STATUS, ErrorCode


def error_response(
    request, code: ErrorCode, message: str, *, status: int | None = None, details=None, headers=None
):
    body = {"code": str(code), "message": message, "request_id": getattr(request, "request_id", "")}
    if details is not None:
        body["details"] = details
    return JsonResponse({"error": body}, status=status or HTTP_STATUS[code], headers=headers)


_STATUS_CODES = {
    400: ErrorCode.MALFORMED,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.MALFORMED,
    409: ErrorCode.CONFLICT,
    422: ErrorCode.VALIDATION,
    429: ErrorCode.THROTTLED,
    503: ErrorCode.UNAVAILABLE,
}


def code_for_status(status: int) -> ErrorCode:
    return _STATUS_CODES.get(status, ErrorCode.ERROR if status >= 500 else ErrorCode.MALFORMED)


class JsonErrorsMiddleware:
    """Errors made outside our handlers (e.g. 405 from the URL dispatcher) still answer
    in the one JSON error shape. The HTML admin and console keep their own pages."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (
            response.status_code >= 400
            and not response.get("Content-Type", "").startswith("application/json")
            and not request.path.startswith(("/admin/", "/console/"))
        ):
            text = response.reason_phrase or "error"
            replaced = error_response(
                request, code_for_status(response.status_code), text, status=response.status_code
            )
            for header in ("Allow", "Retry-After", "WWW-Authenticate"):
                if response.has_header(header):
                    replaced[header] = response[header]
            return replaced
        return response
