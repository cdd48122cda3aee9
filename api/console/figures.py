"""The figures the ops console shows, computed with a few indexed queries.

Every query on the jobs table filters `status IN (...)` and a `created_at` range, so it is
a range scan of the (status, created_at) index `job_status_created`; the unfinished
job look-ups stay inside the partial index of queued/running jobs.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field

from django.db import connection
from django.db.models import Case, Count, IntegerField, Value, When
from django.utils import timezone

from stockflow.platform.errors import BUSINESS_CODES, ErrorCode
from stockflow.stock import invariants
from stockflow.stock.models import Batch, Job, StockMove, StockOnHand

# ?window= values: (length, chart bucket). Buckets keep the chart at 15–60 bars.
WINDOWS: dict[str, tuple[datetime.timedelta, datetime.timedelta]] = {
    "15m": (datetime.timedelta(minutes=15), datetime.timedelta(minutes=1)),
    "1h": (datetime.timedelta(hours=1), datetime.timedelta(minutes=1)),
    "24h": (datetime.timedelta(hours=24), datetime.timedelta(minutes=30)),
    "7d": (datetime.timedelta(days=7), datetime.timedelta(hours=4)),
}
DEFAULT_WINDOW = "1h"

STATUSES = [s.value for s in Job.Status]
KINDS = [k.value for k in Job.Kind]

A2_TARGET = 0.999
# A2 counts jobs *finished* in the window. finished_at is not indexed, so the scan is
# bounded by created_at: a job created more than this long before the window and
# finished inside it is not counted (the console shows such old jobs as unfinished
# backlog while they wait).
A2_CREATED_LOOKBACK = datetime.timedelta(hours=24)
SOON_DAYS = 30
STOCK_ROWS_LIMIT = 500
FAILURES_LIMIT = 50

PASS, FAIL, NO_DATA = "PASS", "FAIL", "NO DATA"


def parse_window(value: str | None) -> str:
    return value if value in WINDOWS else DEFAULT_WINDOW


def floor_pct(ratio: float) -> str:
    """99.95 % — rounded *down* to 2 decimals so 99.8999 % never shows as 99.90 %."""
    return f"{math.floor(ratio * 10000) / 100:.2f} %"


# --- jobs created in the window ------------------------------------------------------


@dataclass
class JobWindow:
    since: datetime.datetime
    until: datetime.datetime
    bucket: datetime.timedelta
    by_kind_status: dict[tuple[str, str], int] = field(default_factory=dict)
    by_status: dict[str, int] = field(default_factory=dict)
    failed_by_code: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, code)
    retried_by_status: dict[str, int] = field(default_factory=dict)  # attempts > 1
    series: dict[datetime.datetime, dict[str, int]] = field(
        default_factory=dict
    )  # bucket -> status -> n

    @property
    def total(self) -> int:
        return sum(self.by_status.values())

    @property
    def retried_total(self) -> int:
        return sum(self.retried_by_status.values())


_WINDOW_SQL = f"""
    SELECT date_bin(%s, created_at, %s) AS bucket, kind, status, error_code,
           COUNT(*), COUNT(*) FILTER (WHERE attempts > 1)
    FROM {Job._meta.db_table}
    WHERE status = ANY(%s) AND created_at >= %s AND created_at <= %s
    GROUP BY 1, 2, 3, 4"""
# date_bin's origin: buckets line up with the wall clock (…:00, …:30, 00:00, 04:00, …).
_ORIGIN = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)


def bucket_floor(t: datetime.datetime, bucket: datetime.timedelta) -> datetime.datetime:
    return t - (t - _ORIGIN) % bucket


def job_window(window: str, now: datetime.datetime | None = None) -> JobWindow:
    """One query: counts of jobs created in the window by bucket, kind, status, error code."""
    length, bucket = WINDOWS[window]
    now = now or timezone.now()
    w = JobWindow(since=now - length, until=now, bucket=bucket)
    first = bucket_floor(w.since, bucket)
    t = first
    while t <= now:
        w.series[t] = dict.fromkeys(STATUSES, 0)
        t += bucket
    with connection.cursor() as cursor:
        cursor.execute(_WINDOW_SQL, [bucket, _ORIGIN, STATUSES, w.since, now])
        rows = cursor.fetchall()
    for bucket_start, kind, status, code, n, retried in rows:
        w.by_kind_status[(kind, status)] = w.by_kind_status.get((kind, status), 0) + n
        w.by_status[status] = w.by_status.get(status, 0) + n
        if status == Job.Status.FAILED:
            w.failed_by_code[(kind, code)] = w.failed_by_code.get((kind, code), 0) + n
        if retried:
            w.retried_by_status[status] = w.retried_by_status.get(status, 0) + retried
        w.series.setdefault(bucket_start, dict.fromkeys(STATUSES, 0))[status] += n
    return w


def parse_code(value: str | None) -> str | None:
    return value if value in {c.value for c in ErrorCode} else None


def failures(
    since: datetime.datetime, code: str | None = None, limit: int = FAILURES_LIMIT
) -> list[Job]:
    """The latest failed jobs created in the window, optionally of one error code
    (index range scan, newest first)."""
    qs = Job.objects.filter(status=Job.Status.FAILED, created_at__gte=since)
    if code:
        qs = qs.filter(error_code=code)
    return list(
        qs.select_related("sale")
        .only(
            "id",
            "kind",
            "sale__number",
            "status",
            "attempts",
            "error_code",
            "error_message",
            "request_id",
            "created_at",
            "finished_at",
        )
        .order_by("-created_at")[:limit]
    )


def oldest_unfinished(status: str) -> Job | None:
    return (
        Job.objects.filter(status=status)
        .select_related("sale")
        .only(
            "id",
            "kind",
            "sale__number",
            "status",
            "attempts",
            "request_id",
            "created_at",
            "lease_expires_at",
        )
        .order_by("created_at")
        .first()
    )


# --- quality scenarios -------------------------------------------------------------


@dataclass
class Verdict:
    verdict: str  # PASS | FAIL | NO DATA
    figure: str


@dataclass
class A1:
    verdict: str
    negative: list[tuple]
    mismatched: list[tuple]
    batches: int
    moves: int
    other_checks: dict[str, list[tuple]]

    @property
    def figure(self) -> str:
        def n(rows):  # invariants.check() keeps at most 20 rows per check
            return f"{len(rows)}+" if len(rows) >= 20 else str(len(rows))

        return (
            f"negative on-hand: {n(self.negative)} · on-hand ≠ Σ moves: {n(self.mismatched)} "
            f"(checked {self.batches} batches, {self.moves} moves)"
        )


def a1(report: invariants.LedgerReport) -> A1:
    """A1 flash-sale concurrency: 0 oversell — no negative on-hand, on-hand == Σ moves."""
    negative = report.violations.get("on_hand_not_negative", [])
    mismatched = report.violations.get("on_hand_equals_moves", [])
    other = {
        k: v
        for k, v in report.violations.items()
        if k not in ("on_hand_not_negative", "on_hand_equals_moves")
    }
    return A1(
        verdict=FAIL if negative or mismatched else PASS,
        negative=negative,
        mismatched=mismatched,
        batches=report.counts.get(Batch._meta.db_table, 0),
        moves=report.counts.get(StockMove._meta.db_table, 0),
        other_checks=other,
    )


@dataclass
class A2:
    succeeded: int = 0
    failed_error: int = 0  # non-business failures (code `error`, or anything not in BUSINESS_CODES)
    failed_business: dict[str, int] = field(default_factory=dict)
    retried_succeeded: int = 0
    retried_failed_error: int = 0
    retried_failed_business: int = 0
    since: datetime.datetime | None = None

    @staticmethod
    def _ratio(good: int, bad: int) -> float | None:
        return good / (good + bad) if good + bad else None

    @property
    def success_ratio(self) -> float | None:
        return self._ratio(self.succeeded, self.failed_error)

    @property
    def recovery_ratio(self) -> float | None:
        return self._ratio(self.retried_succeeded, self.retried_failed_error)

    @staticmethod
    def _verdict(ratio: float | None) -> str:
        if ratio is None:
            return NO_DATA
        return PASS if ratio >= A2_TARGET else FAIL

    @property
    def success(self) -> Verdict:
        r = self.success_ratio
        figure = (
            f"{floor_pct(r)} = {self.succeeded} succeeded / ({self.succeeded} succeeded + "
            f"{self.failed_error} failed with error)"
            if r is not None
            else "no sale.paid job finished in the window (business failures excluded)"
        )
        return Verdict(self._verdict(r), figure)

    @property
    def retries(self) -> Verdict:
        r = self.recovery_ratio
        figure = (
            f"{self.retried_succeeded} retried jobs succeeded, {self.retried_failed_error} failed with error "
            f"({floor_pct(r)} recovered)"
            if r is not None
            else "no retried sale.paid job finished in the window"
        )
        if self.retried_failed_business:
            figure += f"; {self.retried_failed_business} ended with a business code after a retry"
        return Verdict(self._verdict(r), figure)

    @property
    def verdict(self) -> str:
        parts = [self.success.verdict, self.retries.verdict]
        if FAIL in parts:
            return FAIL
        return NO_DATA if all(p == NO_DATA for p in parts) else PASS

    @property
    def business_total(self) -> int:
        return sum(self.failed_business.values())


def a2(since: datetime.datetime, now: datetime.datetime | None = None) -> A2:
    """A2 job resilience over sale.paid jobs finished in the window: one aggregate query."""
    now = now or timezone.now()
    retried = Case(
        When(attempts__gt=1, then=Value(1)), default=Value(0), output_field=IntegerField()
    )
    grouped = (
        Job.objects.filter(
            status__in=[Job.Status.SUCCEEDED, Job.Status.FAILED],
            created_at__gte=since - A2_CREATED_LOOKBACK,
            created_at__lte=now,
            kind=Job.Kind.SALE_PAID,
            finished_at__gte=since,
            finished_at__lte=now,
        )
        .annotate(retried=retried)
        .values_list("status", "error_code", "retried")
        .annotate(n=Count("id"))
        .order_by()
    )
    result = A2(since=since)
    for status, code, retried, n in grouped:
        if status == Job.Status.SUCCEEDED:
            result.succeeded += n
            if retried:
                result.retried_succeeded += n
        elif code in BUSINESS_CODES:
            result.failed_business[code] = result.failed_business.get(code, 0) + n
            if retried:
                result.retried_failed_business += n
        else:
            result.failed_error += n
            if retried:
                result.retried_failed_error += n
    return result


# --- stock -------------------------------------------------------------------------


@dataclass
class StockRow:
    batch_id: int
    sku: str
    product: str
    location: str
    lot: str
    expires_on: datetime.date | None
    on_hand: int
    days_left: int | None
    state: str  # expired | soon | ok | never

    @property
    def css(self) -> str:
        return {"expired": "expired", "soon": "soon"}.get(self.state, "")


@dataclass
class Stock:
    rows: list[StockRow]
    total_batches: int

    @property
    def truncated(self) -> bool:
        return len(self.rows) < self.total_batches

    def _sum(self, state):
        rows = [r for r in self.rows if r.state == state and r.on_hand > 0]
        return len(rows), sum(r.on_hand for r in rows)

    @property
    def expired(self):  # (batches with stock, units)
        return self._sum("expired")

    @property
    def soon(self):
        return self._sum("soon")


def stock(total_batches: int, limit: int = STOCK_ROWS_LIMIT) -> Stock:
    """On-hand per batch in FEFO order (expiry first, never-expiring last). Expiry is
    judged by each location's own calendar, as the FEFO allocator does."""
    qs = (
        StockOnHand.objects.select_related("batch__product", "batch__location").order_by(
            "batch__expires_on", "batch__product__sku", "batch__location__code", "batch__lot"
        )
    )[:limit]  # PostgreSQL sorts NULL (never expires) last on ascending order
    today_of: dict[int, datetime.date] = {}
    rows = []
    for soh in qs:
        b = soh.batch
        today = today_of.get(b.location_id)
        if today is None:
            today = today_of[b.location_id] = b.location.today()
        if b.expires_on is None:
            days_left, state = None, "never"
        else:
            days_left = (b.expires_on - today).days
            state = "expired" if days_left < 0 else "soon" if days_left <= SOON_DAYS else "ok"
        rows.append(
            StockRow(
                b.pk,
                b.product.sku,
                b.product.name,
                b.location.code,
                b.lot,
                b.expires_on,
                soh.quantity,
                days_left,
                state,
            )
        )
    return Stock(rows=rows, total_batches=max(total_batches, len(rows)))
