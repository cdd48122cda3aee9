"""The ops console: one page an operator opens during an incident, a job list with
search and filters, a job page with its operator actions (retry, re-send), runbooks.

Staff only (Django admin login), CSRF on every POST; server-rendered HTML with inline
CSS and an inline SVG chart; a handful of indexed queries per page (see figures.py).
"""

import json
import os
import re
import time
from pathlib import Path

import structlog
from django.conf import settings
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from stockflow.platform.errors import BUSINESS_CODES, ErrorCode
from stockflow.stock import invariants, selectors
from stockflow.stock.models import Job, Refund, StockMove

from . import charts, figures, job_actions, job_search, markdown_safe, zones
from .paging import paginate

logger = structlog.get_logger(__name__)

RUNBOOK_DIR = Path(settings.BASE_DIR) / "monitoring" / "runbooks"
_RUNBOOK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.md$")
REFRESH_CHOICES = (0, 15, 30, 60)


def _url_from_env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip() or default
    # Only http(s) links: an env value must not become a javascript: URL.
    return value.rstrip("/") if re.match(r"^https?://", value) else default


def _runbook_base() -> str | None:
    """RUNBOOK_BASE_URL (http/https, ending in /) when set: where published runbooks live."""
    base = os.environ.get("RUNBOOK_BASE_URL", "").strip()
    return base.rstrip("/") + "/" if re.match(r"^https?://", base) else None


def _flower_default() -> str:
    """Where bin/flower listens (FLOWER_ADDRESS:FLOWER_PORT), when FLOWER_URL (its public
    address, e.g. behind a proxy) is not set. A wildcard bind is reached on localhost."""
    address = os.environ.get("FLOWER_ADDRESS", "").strip() or "127.0.0.1"
    if address in ("0.0.0.0", "::", "[::]"):
        address = "127.0.0.1"
    port = os.environ.get("FLOWER_PORT", "").strip()
    port = port if port.isdigit() else "5555"
    host = f"[{address}]" if ":" in address and not address.startswith("[") else address
    return f"http://{host}:{port}"


def links() -> dict:
    external = _runbook_base()
    return {
        "flower": _url_from_env("FLOWER_URL", _flower_default()),
        "grafana": _url_from_env("GRAFANA_URL", "http://127.0.0.1:3000"),
        "runbooks": external or reverse("console:runbooks"),
        "runbooks_external": external is not None,
        "admin": reverse("admin:index"),
    }


# Which runbooks belong next to which part of the page (file names = alert names).
RUNBOOKS_FOR = {
    "a1": ["LedgerInvariantViolated.md"],
    "a2": ["SalePaidTransitionFailures.md", "StockConsumeFailures.md"],
    "backlog": ["OldestQueuedJobTooOld.md", "CeleryWorkerDown.md"],
    "failures": ["SalePaidTransitionFailures.md", "RefundFailures.md"],
}


def runbook_links() -> dict[str, list[tuple[str, str]]]:
    """{page part: [(runbook name, url)]}: RUNBOOK_BASE_URL + file when set, else the
    console's own copy when the file is there; runbooks that exist nowhere are left out."""
    external = _runbook_base()
    present = {p.name for p in RUNBOOK_DIR.glob("*.md")} if RUNBOOK_DIR.is_dir() else set()
    out = {}
    for part, names in RUNBOOKS_FOR.items():
        out[part] = [
            (
                name.removesuffix(".md"),
                external + name if external else reverse("console:runbook", args=[name]),
            )
            for name in names
            if external or name in present
        ]
    return out


_age = figures.age


def _refresh(request) -> int:
    try:
        value = int(request.GET.get("refresh", 0))
    except ValueError:
        return 0
    return value if value in REFRESH_CHOICES else 0


@staff_member_required
@require_GET
def overview(request):
    started = time.perf_counter()
    now = timezone.now()
    window = figures.parse_window(request.GET.get("window"))
    code = figures.parse_code(request.GET.get("code"))
    zone = zones.chosen(request)
    jobs = figures.job_window(window, now)
    unfinished = selectors.job_backlog()[0]
    oldest = {
        status: figures.oldest_unfinished(status)
        for status in (Job.Status.QUEUED, Job.Status.RUNNING)
    }
    backlog = [
        {
            "status": status,
            "count": unfinished.get(status, 0),
            "job": job,
            "age": _age(now - job.created_at) if job else "",
            # Older than its lease: the reconciler should have re-sent it already.
            "stale": bool(job and job.lease_expires_at < now),
        }
        for status, job in oldest.items()
    ]
    kinds = figures.KINDS
    statuses = figures.STATUSES
    table = [
        {
            "kind": kind,
            "cells": [(s, jobs.by_kind_status.get((kind, s), 0)) for s in statuses],
            "total": sum(jobs.by_kind_status.get((kind, s), 0) for s in statuses),
        }
        for kind in kinds
    ]
    failures = paginate(
        request,
        figures.failures(jobs.since, code),
        param="fpage",
        per_page=figures.FAILURES_PAGE_SIZE,
        anchor="failures",
    )
    stock = paginate(
        request,
        figures.stock_on_hand(),
        param="spage",
        per_page=figures.STOCK_PAGE_SIZE,
        anchor="stock",
    )
    context = {
        "now": now,
        "zone": zone,
        "window": window,
        "windows": list(figures.WINDOWS),
        "refresh": _refresh(request),
        "refresh_choices": REFRESH_CHOICES,
        "jobs": jobs,
        "statuses": statuses,
        "status_totals": [(s, jobs.by_status.get(s, 0)) for s in statuses],
        "retried": [(s, jobs.retried_by_status.get(s, 0)) for s in statuses],
        "table": table,
        "failed_by_code": sorted(jobs.failed_by_code.items(), key=lambda kv: (-kv[1], kv[0])),
        "failures": failures,
        "code": code,
        "backlog": backlog,
        "a1": figures.a1(now, settings.LEDGER_CHECK_INTERVAL_SECONDS),
        "ledger_interval": settings.LEDGER_CHECK_INTERVAL_SECONDS,
        "a2": figures.a2(jobs.since, now),
        "a2_target": f"{figures.A2_TARGET * 100:g} %",
        "a2_lookback": charts.bucket_name(figures.A2_CREATED_LOOKBACK),
        "business_codes": sorted(BUSINESS_CODES),
        "stock": stock,
        "stock_rows": figures.stock_rows(stock.rows),
        "stock_summary": figures.stock_summary(),
        "soon_days": figures.SOON_DAYS,
        "chart": charts.stacked_bars(
            jobs.series,
            jobs.bucket,
            title=f"jobs created per {charts.bucket_name(jobs.bucket)} by status",
            tz=zone.tz,
            zone_name=zone.name,
        ),
        "chart_series": charts.SERIES,
        "bucket_name": charts.bucket_name(jobs.bucket),
        "links": links(),
        "runbooks": runbook_links(),
    }
    context["render_ms"] = round((time.perf_counter() - started) * 1000)
    return render(request, "console/overview.html", context)


def _back(request, default: str) -> str:
    """Where a console form returns to: its `next` field when it is a console address."""
    target = request.POST.get("next", "")
    if target.startswith("/console/") and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return default


def _row(values) -> str:
    return "(" + ", ".join(str(v) for v in values) + ")"  # 10, not Decimal('10')


@staff_member_required
@require_POST
def recompute_ledger(request):
    """Run the ledger check once now (the whole ledger, one snapshot) and store its verdict
    where the periodic check keeps it."""
    report = invariants.check()
    violations = figures.record_check(report)
    logger.info("ledger.recomputed", violations=violations, source="console")
    failed = {name: rows for name, rows in report.violations.items() if rows}
    if failed:
        messages.error(
            request,
            f"Ledger check: {violations} violation(s). "
            + "; ".join(
                f"{name}: {len(rows)} (first rows: {', '.join(map(_row, rows[:5]))})"
                for name, rows in failed.items()
            )
            + ". `manage.py check_ledger` lists them all.",
        )
    else:
        messages.success(request, "Ledger check: no violation; verdict stored.")
    return redirect(_back(request, reverse("console:overview") + "#quality"))


@staff_member_required
@require_GET
def job_detail(request, job_id):
    job = get_object_or_404(Job.objects.select_related("sale__location"), pk=job_id)
    moves = list(
        StockMove.objects.filter(job=job)
        .select_related("batch__product", "batch__location", "sale_line", "refund_line")
        .order_by("id")
    )
    refund = Refund.objects.filter(job=job).prefetch_related("lines__sale_line__product").first()
    sale_jobs = list(
        job.sale.jobs.order_by("created_at").only(
            "id", "kind", "status", "attempts", "error_code", "request_id", "created_at"
        )[:50]
    )
    timings = {
        "queue_wait": _age(job.started_at - job.created_at) if job.started_at else "",
        "run": _age(job.finished_at - job.started_at) if job.finished_at and job.started_at else "",
        "age": _age(timezone.now() - job.created_at),
    }
    context = {
        "job": job,
        "zone": zones.of_location(job.sale.location),
        # The buttons offered; the domain action decides again under the job's row lock.
        "failed_with_error": job.status == Job.Status.FAILED and job.error_code == ErrorCode.ERROR,
        "can_retry": job.status == Job.Status.FAILED
        and job.error_code == ErrorCode.ERROR
        and job.attempts < settings.JOB_MAX_ATTEMPTS,
        "can_resend": not job.is_terminal,
        "max_attempts": settings.JOB_MAX_ATTEMPTS,
        "sale": job.sale,
        "lines": list(job.sale.lines.select_related("product")),
        "moves": moves,
        "moves_total": sum(m.quantity for m in moves),
        "refund": refund,
        "sale_jobs": sale_jobs,
        "timings": timings,
        "business": job.error_code in BUSINESS_CODES,
        "payload": json.dumps(job.payload, indent=2, sort_keys=True, default=str),
        "result": json.dumps(job.result, indent=2, sort_keys=True, default=str)
        if job.result is not None
        else "",
        "links": links(),
    }
    return render(request, "console/job.html", context)


@staff_member_required
@require_POST
def job_action(request, job_id, action):
    """Retry or re-send one job (audited as `staff:<username>`), then back to its page with
    what happened: a refusal is a message, never an error page."""
    outcome = job_actions.perform(
        action,
        job_id,
        username=request.user.get_username(),
        request_id=getattr(request, "request_id", ""),
    )
    (messages.success if outcome.ok else messages.error)(request, outcome.message)
    if not outcome.found:
        return redirect("console:jobs")
    return redirect("console:job", job_id=job_id)


@staff_member_required
@require_GET
def jobs(request):
    """Every job, newest first: one search field (job id, request id or sale number) and
    filters on status, kind and error code, in pages."""
    query = job_search.parse(request.GET)
    pager = paginate(request, job_search.find(query), param="page", per_page=figures.JOBS_PAGE_SIZE)
    return render(
        request,
        "console/jobs.html",
        {
            "query": query,
            "pager": pager,
            "zone": zones.chosen(request),
            "statuses": figures.STATUSES,
            "kinds": figures.KINDS,
            "codes": [c.value for c in ErrorCode],
            "business_codes": sorted(BUSINESS_CODES),
            "links": links(),
        },
    )


@staff_member_required
@require_GET
def runbooks(request, name=None):
    """The runbooks in monitoring/runbooks/, rendered from markdown (when RUNBOOK_BASE_URL
    is unset, this is where the console's runbook links point)."""
    files = (
        sorted(p.name for p in RUNBOOK_DIR.glob("*.md") if _RUNBOOK_NAME.match(p.name))
        if RUNBOOK_DIR.is_dir()
        else []
    )
    text = None
    if name is not None:
        if name not in files:
            raise Http404("no such runbook")
        text = markdown_safe.render(
            (RUNBOOK_DIR / name).read_text(encoding="utf-8", errors="replace")
        )
    return render(
        request,
        "console/runbooks.html",
        {
            "files": files,
            "name": name,
            "text": text,
            "links": links(),
            "folder": "monitoring/runbooks/",
        },
    )
