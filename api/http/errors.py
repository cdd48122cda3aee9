"""The one JSON error shape: {"error": {"code", "message", "request_id"}}."""
from django.http import JsonResponse

from api.core.errors import HTTP_STATUS, ErrorCode


def error_response(request, code: ErrorCode, message: str, *, status: int | None = None, details=None, headers=None):
    body = {"code": str(code), "message": message, "request_id": getattr(request, "request_id", "")}
    if details is not None:
        body["details"] = details
    return JsonResponse({"error": body}, status=status or HTTP_STATUS[code], headers=headers)
