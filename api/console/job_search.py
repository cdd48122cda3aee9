"""The console's job list: one search field that tries a job id, a request id and a sale
number, and the same filters as `GET /api/jobs` (stockflow.stock.selectors.jobs)."""

import contextlib
import uuid
from dataclasses import dataclass

from django.db.models import Q

from stockflow.platform.errors import ErrorCode
from stockflow.stock import selectors
from stockflow.stock.models import Job, Sale

from . import figures

MAX_QUERY = 128  # the longest request id or sale number there is


@dataclass(frozen=True)
class JobQuery:
    q: str = ""
    status: str = ""
    kind: str = ""
    code: str = ""

    @property
    def filtered(self) -> bool:
        return bool(self.q or self.status or self.kind or self.code)


def _one_of(value: str | None, allowed) -> str:
    return value if value in allowed else ""


def parse(params) -> JobQuery:
    """Unknown filter values are ignored (the whole list shows), never an error page."""
    return JobQuery(
        q=(params.get("q") or "").strip()[:MAX_QUERY],
        status=_one_of(params.get("status"), Job.Status.values),
        kind=_one_of(params.get("kind"), Job.Kind.values),
        code=_one_of(params.get("code"), {c.value for c in ErrorCode}),
    )


def find(query: JobQuery):
    """Jobs matching the filters and, when given, the search text as a job id, a request id
    or a sale number; newest first."""
    found = selectors.jobs(
        status=query.status or None, kind=query.kind or None, error_code=query.code or None
    )
    if query.q:
        # The sale first (its number is unique): an OR across the join would scan every job.
        sale_ids = list(Sale.objects.filter(number=query.q).values_list("pk", flat=True)[:1])
        match = Q(request_id=query.q) | Q(sale_id__in=sale_ids)
        with contextlib.suppress(ValueError):  # not a UUID: not a job id
            match |= Q(pk=uuid.UUID(query.q))
        found = found.filter(match)
    return figures.job_rows(found)
