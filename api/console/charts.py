"""A stacked bar chart as inline SVG, rendered on the server: no JavaScript, no build."""

from __future__ import annotations

import datetime
from html import escape

from django.utils.safestring import SafeString, mark_safe

# Stacking order, bottom to top, and colours (also used by the page's legend).
SERIES = [
    ("succeeded", "#2e7d32"),
    ("failed", "#c62828"),
    ("running", "#1565c0"),
    ("queued", "#9e9e9e"),
]
COLOURS = dict(SERIES)


def _label(t: datetime.datetime, bucket: datetime.timedelta) -> str:
    return (
        t.strftime("%m-%d %H:%M") if bucket >= datetime.timedelta(hours=1) else t.strftime("%H:%M")
    )


def _nice_max(n: float) -> int:
    """The y-axis maximum: the smallest 1, 2 or 5 × 10^k that is ≥ n (at least 1), so the
    tallest bar fills 50–100 % of the plot."""
    scale = 1
    while True:
        for step in (1, 2, 5):
            if step * scale >= n:
                return step * scale
        scale *= 10


def stacked_bars(
    series: dict[datetime.datetime, dict[str, int]],
    bucket: datetime.timedelta,
    *,
    width: int = 760,
    height: int = 180,
    title: str = "jobs",
    tz: datetime.tzinfo = datetime.UTC,
    zone_name: str = "UTC",
) -> SafeString:
    """series: {bucket start: {status: count}} in time order. Time labels are in `tz`
    (a location's zone, named `zone_name`); each label's and bar's tooltip gives UTC too."""
    left, right, top, bottom = 50, 8, 10, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    times = sorted(series)
    peak = max((sum(v.values()) for v in series.values()), default=0)
    y_max = _nice_max(max(peak, 1))
    n = max(len(times), 1)
    slot = plot_w / n
    bar_w = max(slot * 0.8, 1.0)
    unit = bucket_name(bucket)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    # Axes and the y scale: 0, half, max.
    for frac in (0, 0.5, 1):
        y = top + plot_h - frac * plot_h
        value = y_max * frac
        label = f"{value:g}"
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
        )
        out.append(
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10" fill="#555">{label}</text>'
        )
    for i, t in enumerate(times):
        counts = series[t]
        x = left + i * slot + (slot - bar_w) / 2
        y = top + plot_h
        tip = f"{_both(t, bucket, tz, zone_name)} (per {unit}): " + ", ".join(
            f"{s} {counts.get(s, 0)}" for s, _ in SERIES
        )
        out.append(f'<g class="bar" data-bucket="{t.isoformat()}"><title>{escape(tip)}</title>')
        for status, colour in SERIES:
            c = counts.get(status, 0)
            if not c:
                continue
            h = c / y_max * plot_h
            y -= h
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{colour}" '
                f'data-status="{status}" data-count="{c}"/>'
            )
        # An invisible full-height target so the tooltip works on empty buckets too.
        out.append(
            f'<rect x="{x:.1f}" y="{top}" width="{bar_w:.1f}" height="{plot_h}" fill="transparent"/></g>'
        )
    # x labels: first, middle, last bucket, in the zone; UTC on hover.
    if times:
        for i in sorted({0, len(times) // 2, len(times) - 1}):
            x = left + i * slot + slot / 2
            anchor = "start" if i == 0 else "end" if i == len(times) - 1 else "middle"
            out.append(
                f'<text class="x-label" x="{x:.1f}" y="{top + plot_h + 13}" text-anchor="{anchor}" '
                f'font-size="10" fill="#555"><title>{escape(_both(times[i], bucket, tz, zone_name))}'
                f"</title>{_label(times[i].astimezone(tz), bucket)}</text>"
            )
    # Axis titles: what the bars count, and which clock the times are on.
    out.append(
        f'<text class="x-title" x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle" '
        f'font-size="10" fill="#333">time ({escape(zone_name)}), one bar per {escape(unit)}</text>'
    )
    out.append(
        f'<text class="y-title" x="10" y="{top + plot_h / 2:.1f}" text-anchor="middle" font-size="10" '
        f'fill="#333" transform="rotate(-90 10 {top + plot_h / 2:.1f})">jobs</text>'
    )
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="#999"/>')
    out.append("</svg>")
    return mark_safe("".join(out))  # every interpolated text above is escaped or numeric


def _both(
    t: datetime.datetime, bucket: datetime.timedelta, tz: datetime.tzinfo, zone_name: str
) -> str:
    """`10:30 Europe/Paris = 09:30 UTC`: the zone's time first, UTC beside it."""
    local = f"{_label(t.astimezone(tz), bucket)} {zone_name}"
    if zone_name == "UTC":
        return local
    return f"{local} = {_label(t.astimezone(datetime.UTC), bucket)} UTC"


def bucket_name(bucket: datetime.timedelta) -> str:
    seconds = int(bucket.total_seconds())
    if seconds % 3600 == 0:
        h = seconds // 3600
        return "hour" if h == 1 else f"{h} hours"
    m = seconds // 60
    return "minute" if m == 1 else f"{m} minutes"
