"""The one pagination of list endpoints (GET /api/jobs, /api/stock, /api/leads):
django-ninja's cursor pagination. A request takes an opaque `cursor` and a `page_size`;
the answer is `{"results", "next", "previous"}`, the other pages' URLs (null at an end).
A cursor holds a position in the ordering, not an offset from the top, so rows inserted
meanwhile (newer jobs, new leads) never shift the pages a client is walking."""

from collections.abc import Callable
from typing import Annotated

import pydantic
from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from ninja import Query
from ninja.errors import ValidationError as NinjaValidationError
from ninja.pagination import CursorPagination

from stockflow.platform.errors import DomainError, ErrorCode

PageSize = Annotated[int | None, Query(ge=1, le=10_000)]
CursorParam = Annotated[str | None, Query(max_length=512)]


def page(
    request: HttpRequest,
    rows: QuerySet,
    *,
    ordering: tuple[str, ...],
    cursor: str | None,
    page_size: int | None,
    present: Callable,
) -> dict:
    """One page of `rows` in `ordering` (its first field gives the position: unique, or
    nearly so), each row through `present`."""
    pager = CursorPagination(
        ordering=ordering,
        page_size=settings.API_PAGE_SIZE,
        max_page_size=settings.API_MAX_PAGE_SIZE,
    )
    try:
        out = pager.paginate_queryset(
            rows, pager.Input(cursor=cursor, page_size=page_size), request
        )
    except (NinjaValidationError, pydantic.ValidationError, DjangoValidationError, ValueError):
        # Not a cursor we made (garbage, or a position that is not a value of the field).
        raise DomainError(ErrorCode.VALIDATION, "invalid cursor") from None
    out["results"] = [present(row) for row in out["results"]]
    return out
