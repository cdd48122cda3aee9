"""Every error code stockflow speaks, in one place: API answers, job results,
metric labels and log events all use these values."""

from enum import StrEnum


class ErrorCode(StrEnum):
    MALFORMED = "malformed_request"
    TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    VALIDATION = "validation_error"
    UNKNOWN_SKU = "unknown_sku"
    UNKNOWN_LOCATION = "unknown_location"
    UNKNOWN_SALE_LINE = "unknown_sale_line"
    CONFLICT = "conflict"
    INVALID_TRANSITION = "invalid_transition"
    JOB_IN_FLIGHT = "job_in_flight"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    # An operator action on a job in a state that does not allow it (retry after a
    # business failure, re-send of a finished job).
    NOT_RETRYABLE = "not_retryable"
    INSUFFICIENT_STOCK = "insufficient_stock"
    EXPIRED_BATCH = "expired_batch"
    OVER_REFUND = "over_refund"
    THROTTLED = "throttled"
    UNAVAILABLE = "unavailable"
    # A row this request needs is held by another transaction past the lock timeout: retry.
    BUSY = "busy"
    ERROR = "error"


# Business outcomes: the system answered correctly, the request could not be served.
# They never count against resilience; any other failure code (today only `error`) does.
# A sale.paid job fails for a business reason only for want of sellable stock.
STOCK_SHORTAGE_CODES = frozenset({ErrorCode.INSUFFICIENT_STOCK, ErrorCode.EXPIRED_BATCH})
BUSINESS_CODES = STOCK_SHORTAGE_CODES | {ErrorCode.INVALID_TRANSITION, ErrorCode.OVER_REFUND}


HTTP_STATUS = {
    ErrorCode.MALFORMED: 400,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.INVALID_TRANSITION: 409,
    ErrorCode.JOB_IN_FLIGHT: 409,
    ErrorCode.IDEMPOTENCY_CONFLICT: 409,
    ErrorCode.NOT_RETRYABLE: 409,
    ErrorCode.VALIDATION: 422,
    ErrorCode.UNKNOWN_SKU: 422,
    ErrorCode.UNKNOWN_LOCATION: 422,
    ErrorCode.UNKNOWN_SALE_LINE: 422,
    ErrorCode.INSUFFICIENT_STOCK: 409,
    ErrorCode.EXPIRED_BATCH: 409,
    ErrorCode.OVER_REFUND: 422,
    ErrorCode.THROTTLED: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.BUSY: 503,
    ErrorCode.ERROR: 500,
}


class DomainError(Exception):
    """A business outcome that is not success: never retried, never a 500."""

    def __init__(self, code: ErrorCode, message: str, details: list | dict | None = None):
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.details = details

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]
