"""The figures the ops console shows, computed with a few indexed queries.

Every query on the jobs table filters `status IN (...)` and a `created_at` range, so it is
a range scan of the (status, created_at) index `job_status_created`; the unfinished
job look-ups stay inside the partial index of queued/running jobs.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field

import redis
from django.db import connection
from django.db.models import Case, Count, IntegerField, Q, Sum, Value, When
from django.utils import timezone

from stockflow.platform.errors import BUSINESS_CODES, ErrorCode
from stockflow.stock import invariants
from stockflow.stock.models import Job, Location, StockOnHand

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
# Rows per page of the console's lists (each list pages on its own).
STOCK_PAGE_SIZE = 100
FAILURES_PAGE_SIZE = 50
JOBS_PAGE_SIZE = 50
# The stored ledger verdict is stale past this many check intervals (beat not running?).
LEDGER_STALE_INTERVALS = 2

PASS, FAIL, NO_DATA = "PASS", "FAIL", "NO DATA"


def parse_window(value: str | None) -> str:
    return value if value in WINDOWS else DEFAULT_WINDOW


def age(delta: datetime.timedelta) -> str:
    exact = delta.total_seconds()
    if exact < 1:
        return f"{max(exact, 0) * 1000:.0f} ms"
    if exact < 10:
        return f"{exact:.1f} s"
    seconds = int(exact)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


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


def failures(since: datetime.datetime, code: str | None = None):
    """The failed jobs created in the window, optionally of one error code, newest first
    (index range scan; the caller pages it)."""
    qs = Job.objects.filter(status=Job.Status.FAILED, created_at__gte=since)
    if code:
        qs = qs.filter(error_code=code)
    return job_rows(qs)


def job_rows(qs):
    """What a console job list shows of each job (and its sale's number), newest first."""
    return (
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
        .order_by("-created_at", "-id")
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
    """Ledger consistency (A1: 0 oversell), as the periodic ledger check last found it:
    read from storage, not computed per page view (the check scans the whole ledger)."""

    verdict: str
    violations: int | None
    checked_at: datetime.datetime | None
    age: str = ""
    stale: bool = False
    unreadable: bool = False

    @property
    def figure(self) -> str:
        if self.unreadable:
            return "the stored verdict cannot be read (Redis unreachable)"
        if self.checked_at is None:
            return "no ledger check has run yet"
        n = self.violations or 0
        figure = f"{n} violation{'' if n == 1 else 's'} of the ledger invariants"
        return figure + (" (at most 20 counted per invariant)" if n else "")


def a1(now: datetime.datetime, interval_seconds: int) -> A1:
    """The stored verdict of the last ledger check (beat's `check_ledger`, or the
    console's "recompute now"), and its age."""
    try:
        state = invariants.last_verdict()
    except redis.RedisError:
        return A1(verdict=NO_DATA, violations=None, checked_at=None, unreadable=True)
    if state is None:
        return A1(verdict=NO_DATA, violations=None, checked_at=None)
    violations, checked = int(state[0]), state[1]
    checked_at = datetime.datetime.fromtimestamp(checked, tz=datetime.UTC)
    return A1(
        verdict=FAIL if violations else PASS,
        violations=violations,
        checked_at=checked_at,
        age=age(now - checked_at),
        stale=(now - checked_at).total_seconds() > LEDGER_STALE_INTERVALS * interval_seconds,
    )


def record_check(report: invariants.LedgerReport) -> int:
    """Store a check's verdict as the periodic task does; the number of violations."""
    violations = sum(len(rows) for rows in report.violations.values())
    invariants.record_verdict(violations)
    return violations


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
    """Paid-transition success rate (A2, job resilience) over sale.paid jobs finished in the
    window: one aggregate query."""
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


def stock_on_hand():
    """On-hand per batch in FEFO order (expiry first, never-expiring last; PostgreSQL sorts
    NULL last on ascending order), batch id last so that pages never overlap."""
    return StockOnHand.objects.select_related("batch__product", "batch__location").order_by(
        "batch__expires_on",
        "batch__product__sku",
        "batch__location__code",
        "batch__lot",
        "batch_id",
    )


def stock_rows(on_hand) -> list[StockRow]:
    """Expiry is judged by each location's own calendar, as the FEFO allocator does."""
    today_of: dict[int, datetime.date] = {}
    rows = []
    for soh in on_hand:
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
    return rows


@dataclass
class StockSummary:
    expired: tuple[int, int]  # (batches with stock, units)
    soon: tuple[int, int]


def stock_summary() -> StockSummary:
    """Expired and soon-expiring stock over every batch (not one page), each location by
    its own calendar: one query for the locations, one aggregate."""
    expired, soon = Q(), Q()
    for location in Location.objects.only("id", "timezone"):
        today = location.today()
        here = Q(batch__location_id=location.pk)
        expired |= here & Q(batch__expires_on__lt=today)
        soon |= here & Q(
            batch__expires_on__gte=today,
            batch__expires_on__lte=today + datetime.timedelta(days=SOON_DAYS),
        )
    if not expired:  # no location: no batch either
        return StockSummary(expired=(0, 0), soon=(0, 0))
    totals = StockOnHand.objects.filter(quantity__gt=0).aggregate(
        expired_batches=Count("pk", filter=expired),
        expired_units=Sum("quantity", filter=expired),
        soon_batches=Count("pk", filter=soon),
        soon_units=Sum("quantity", filter=soon),
    )
    return StockSummary(
        expired=(totals["expired_batches"], totals["expired_units"] or 0),
        soon=(totals["soon_batches"], totals["soon_units"] or 0),
    )
