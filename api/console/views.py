"""The ops console: one page an operator opens during an incident, plus a job page.

Staff only (Django admin login); server-rendered HTML with inline CSS and an inline
SVG chart; a handful of indexed queries per page (see figures.py).
"""

import json
import os
import re
import time
from pathlib import Path

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.http import Http404
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET

from stockflow.platform.errors import BUSINESS_CODES
from stockflow.stock import invariants
from stockflow.stock.models import Batch, Job, Refund, StockMove

from . import charts, figures

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


def links() -> dict:
    external = _runbook_base()
    return {
        "flower": _url_from_env("FLOWER_URL", "http://127.0.0.1:5555"),
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


def _age(delta) -> str:
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
    jobs = figures.job_window(window, now)
    report = invariants.check()
    oldest = {
        status: figures.oldest_unfinished(status)
        for status in (Job.Status.QUEUED, Job.Status.RUNNING)
    }
    backlog = [
        {
            "status": status,
            "count": report.unfinished_jobs.get(status, 0),
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
    stock = figures.stock(report.counts.get(Batch._meta.db_table, 0))
    context = {
        "now": now,
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
        "failures": figures.failures(jobs.since, code),
        "code": code,
        "failures_limit": figures.FAILURES_LIMIT,
        "backlog": backlog,
        "a1": figures.a1(report),
        "a2": figures.a2(jobs.since, now),
        "a2_target": f"{figures.A2_TARGET * 100:g} %",
        "a2_lookback": charts.bucket_name(figures.A2_CREATED_LOOKBACK),
        "business_codes": sorted(BUSINESS_CODES),
        "ledger_other": report.violations,
        "stock": stock,
        "soon_days": figures.SOON_DAYS,
        "chart": charts.stacked_bars(
            jobs.series,
            jobs.bucket,
            title=f"jobs created per {charts.bucket_name(jobs.bucket)} by status",
        ),
        "chart_series": charts.SERIES,
        "bucket_name": charts.bucket_name(jobs.bucket),
        "links": links(),
        "runbooks": runbook_links(),
    }
    context["render_ms"] = round((time.perf_counter() - started) * 1000)
    return render(request, "console/overview.html", context)


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
@require_GET
def runbooks(request, name=None):
    """The runbooks in monitoring/runbooks/, as plain text (when RUNBOOK_BASE_URL is
    unset, this is where the console's runbook links point)."""
    files = (
        sorted(p.name for p in RUNBOOK_DIR.glob("*.md") if _RUNBOOK_NAME.match(p.name))
        if RUNBOOK_DIR.is_dir()
        else []
    )
    text = None
    if name is not None:
        if name not in files:
            raise Http404("no such runbook")
        text = (RUNBOOK_DIR / name).read_text(encoding="utf-8", errors="replace")
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
