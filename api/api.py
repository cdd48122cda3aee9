"""The NinjaAPI instance: authentication, the error contract, the OpenAPI document."""

import functools

import psycopg.errors
import sentry_sdk
import structlog
from django import db
from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import Http404
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError
from redis.exceptions import RedisError

from api.auth import BearerToken
from api.errors import code_for_status, error_response
from api.parser import StrictParser
from stockflow.observability import metrics
from stockflow.platform.errors import DomainError, ErrorCode

logger = structlog.get_logger(__name__)

_REQUEST_ID = {
    "description": "The request id (yours if you sent a sane X-Request-ID); quote it when reporting",
    "required": True,
    "schema": {"type": "string"},
}
_LOCATION = {
    "description": "Where to poll the job: /api/jobs/{id}",
    "required": True,
    "schema": {"type": "string"},
}
_RETRY_AFTER = {
    "description": "Seconds to wait before trying again",
    "required": False,
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}


def _docs_access(view):
    """As cookiecutter-django does: the interactive docs and the OpenAPI document are for
    logged-in staff in production (API_DOCS_STAFF_ONLY), read at each request."""
    staff_only = staff_member_required(view)

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        guarded = staff_only if settings.API_DOCS_STAFF_ONLY else view
        return guarded(request, *args, **kwargs)

    return wrapper


class StockflowAPI(NinjaAPI):
    def get_openapi_schema(self, *args, **kwargs):
        """The response headers every caller relies on, declared (django-ninja has no
        per-response header declaration): X-Request-ID on every answer, Location on 202,
        Retry-After on 429 and 503."""
        schema = super().get_openapi_schema(*args, **kwargs)
        for operations in schema["paths"].values():
            for operation in operations.values():
                for status, response in operation.get("responses", {}).items():
                    headers = response.setdefault("headers", {})
                    headers["X-Request-ID"] = _REQUEST_ID
                    if int(status) == 202:
                        headers["Location"] = _LOCATION
                    if int(status) in (429, 503):
                        headers["Retry-After"] = _RETRY_AFTER
        return schema


api = StockflowAPI(
    title="stockflow",
    version="1.0.0",
    description="Sale transitions and refunds accepted as durable jobs; stock consumed FEFO by Celery workers.",
    auth=BearerToken(),
    urls_namespace="api",
    docs_url="/api/docs",
    openapi_url="/api/openapi.json",
    parser=StrictParser(),
    docs_decorator=_docs_access,
)


@api.exception_handler(DomainError)
def _domain_error(request, exc: DomainError):
    headers = None
    if exc.code == ErrorCode.THROTTLED and isinstance(exc.details, dict):
        headers = {"Retry-After": str(exc.details["retry_after"])}
    return error_response(request, exc.code, exc.message, details=exc.details, headers=headers)


@api.exception_handler(ValidationError)
def _validation_error(request, exc: ValidationError):
    fields = [
        {
            "field": ".".join(str(p) for p in e.get("loc", ())[1:]) or "body",
            "message": e.get("msg", ""),
        }
        for e in exc.errors
    ]
    if all(
        e.get("loc", ("",))[0] == "header" and e.get("type") in ("missing", "string_too_short")
        for e in exc.errors
    ):
        # A required header left out (e.g. Idempotency-Key) is a malformed request, not bad data.
        return error_response(
            request, ErrorCode.MALFORMED, "a required header is missing", details=fields
        )
    return error_response(
        request, ErrorCode.VALIDATION, "request failed validation", details=fields
    )


@api.exception_handler(AuthenticationError)
def _unauthorized(request, exc):
    return error_response(
        request,
        ErrorCode.UNAUTHORIZED,
        "missing or invalid bearer token",
        headers={"WWW-Authenticate": "Bearer"},
    )


@api.exception_handler(HttpError)
def _http_error(request, exc: HttpError):
    if isinstance(exc.__cause__, DomainError):
        # Refused by the body parser (e.g. 415): django-ninja wraps that in a 400.
        return _domain_error(request, exc.__cause__)
    code = code_for_status(exc.status_code)
    return error_response(request, code, str(exc.message), status=exc.status_code)


@api.exception_handler(Http404)
def _not_found(request, exc):
    return error_response(request, ErrorCode.NOT_FOUND, "not found")


@api.exception_handler(RequestDataTooBig)
def _too_big(request, exc):
    return error_response(request, ErrorCode.TOO_LARGE, "request body too large")


@api.exception_handler(SuspiciousOperation)
def _suspicious(request, exc):
    return error_response(request, ErrorCode.MALFORMED, "request refused")


# The web's lock_timeout / statement_timeout (config/settings.py) firing: another
# transaction holds a row this request needs. Nothing was written; retrying (with the same
# Idempotency-Key) is safe.
_BUSY = (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled)


@api.exception_handler(db.OperationalError)
@api.exception_handler(db.InterfaceError)
def _database_down(request, exc):
    if isinstance(exc.__cause__, _BUSY):
        logger.warning("http.database_busy", exception_type=type(exc.__cause__).__name__)
        return error_response(
            request, ErrorCode.BUSY, "busy, retry later", headers={"Retry-After": "1"}
        )
    logger.warning("http.database_unavailable", exception_type=type(exc).__name__)
    return error_response(
        request,
        ErrorCode.UNAVAILABLE,
        "database unavailable, retry later",
        headers={"Retry-After": "5"},
    )


@api.exception_handler(RedisError)
def _redis_down(request, exc):
    # Redis holds the lead form's throttle: without it the form is unavailable, not broken.
    logger.warning("http.redis_unavailable", exception_type=type(exc).__name__)
    return error_response(
        request,
        ErrorCode.UNAVAILABLE,
        "service temporarily unavailable, retry later",
        headers={"Retry-After": "5"},
    )


@api.exception_handler(Exception)
def _unexpected(request, exc):
    # Logged with its traceback and sent to Sentry; the caller sees only the request id.
    logger.exception("http.unhandled_exception", exception_type=type(exc).__name__)
    metrics.EXCEPTIONS.labels(type(exc).__name__, "web").inc()
    sentry_sdk.capture_exception(exc)
    return error_response(
        request, ErrorCode.ERROR, "internal error; quote the request id when reporting it"
    )


from api import job_routes, public, routes  # noqa: E402

api.add_router("/api/", routes.router)
api.add_router("/api/", job_routes.router)
api.add_router("/public/", public.router)
