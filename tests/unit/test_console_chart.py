"""The console's chart (api/console/charts.py) and runbook rendering, as pure functions."""

import datetime
import re
import zoneinfo

import pytest

from api.console import charts, markdown_safe


@pytest.mark.parametrize(
    ("peak", "expected"),
    [
        (0, 1),
        (1, 1),
        (2, 2),
        (3, 5),
        (5, 5),
        (6, 10),
        (10, 10),
        (11, 20),  # was 100: a peak of 11 drew at 11 % of the plot's height
        (20, 20),
        (21, 50),
        (50, 50),
        (51, 100),
        (101, 200),
        (999, 1000),
        (1001, 2000),
        (4999, 5000),
        (123_456, 200_000),
        (3_000_000, 5_000_000),  # past the old loop's last scale
        (7_500_000_000, 10_000_000_000),
    ],
)
def test_nice_max_is_the_smallest_1_2_5_step_at_or_above_the_peak(peak, expected):
    assert charts._nice_max(peak) == expected


def test_nice_max_keeps_the_tallest_bar_between_half_and_full_height():
    for peak in range(1, 5001):
        top = charts._nice_max(peak)
        assert peak <= top, peak
        if peak > 1:
            # 1-2-5 steps are at most 2.5× apart: the tallest bar fills ≥ 40 % of the plot.
            assert peak / top >= 0.4, (peak, top)


def _series(start: datetime.datetime, n: int, bucket: datetime.timedelta, counts: dict):
    return {start + i * bucket: dict(counts) for i in range(n)}


def test_the_peak_bar_fills_most_of_the_plot():
    bucket = datetime.timedelta(minutes=1)
    start = datetime.datetime(2026, 12, 2, 9, 0, tzinfo=datetime.UTC)
    svg = charts.stacked_bars(_series(start, 3, bucket, {"succeeded": 11}), bucket)
    heights = [float(h) for h in re.findall(r'height="([\d.]+)" fill="#2e7d32"', svg)]
    plot_h = 180 - 10 - 36
    assert heights and all(h / plot_h == pytest.approx(11 / 20, abs=0.01) for h in heights)
    assert ">20</text>" in svg and ">10</text>" in svg  # the y scale: 0, 10, 20


def test_time_axis_is_labelled_in_the_locations_zone_with_utc_on_hover():
    bucket = datetime.timedelta(minutes=1)
    start = datetime.datetime(2026, 12, 2, 9, 0, tzinfo=datetime.UTC)
    paris = zoneinfo.ZoneInfo("Europe/Paris")  # UTC+1 in December
    svg = charts.stacked_bars(
        _series(start, 15, bucket, {"succeeded": 1}), bucket, tz=paris, zone_name="Europe/Paris"
    )
    labels = re.findall(r'<text class="x-label"[^>]*><title>([^<]*)</title>([^<]*)</text>', svg)
    assert [text for _, text in labels] == ["10:00", "10:07", "10:14"]
    assert labels[0][0] == "10:00 Europe/Paris = 09:00 UTC"
    assert "time (Europe/Paris), one bar per minute" in svg
    assert ">jobs</text>" in svg  # the y axis says what it counts
    tips = re.findall(r'<g class="bar"[^>]*><title>([^<]*)</title>', svg)
    assert tips[0] == (
        "10:00 Europe/Paris = 09:00 UTC (per minute): succeeded 1, failed 0, running 0, queued 0"
    )


def test_utc_is_the_default_clock():
    bucket = datetime.timedelta(hours=4)
    start = datetime.datetime(2026, 12, 1, 0, 0, tzinfo=datetime.UTC)
    svg = charts.stacked_bars(_series(start, 2, bucket, {"failed": 2}), bucket)
    assert "time (UTC), one bar per 4 hours" in svg
    assert "<title>12-01 00:00 UTC</title>12-01 00:00</text>" in svg


# --- runbooks ------------------------------------------------------------------------


def test_runbook_markdown_is_rendered_and_raw_html_is_escaped():
    html = markdown_safe.render(
        "# Jobs failing\n\n"
        "1. Look at **the workers**\n"
        "2. `make check-ledger`\n\n"
        "<script>alert(1)</script>\n\n"
        'Inline <img src=x onerror="alert(2)"> too; '
        "[bad](javascript:alert(3)), [other runbook](CeleryWorkerDown.md), "
        "[docs](https://example.invalid/x)\n\n"
        "```bash\necho '<not a tag>'\n```\n"
    )
    assert "<h1>Jobs failing</h1>" in html
    assert "<ol>" in html and "<strong>the workers</strong>" in html
    assert "<code>make check-ledger</code>" in html
    assert "<script" not in html and "&lt;script&gt;" in html
    assert "<img" not in html and "&lt;img" in html
    assert "javascript:" not in html and '<a href="#">bad</a>' in html
    assert '<a href="CeleryWorkerDown.md">other runbook</a>' in html
    assert '<a href="https://example.invalid/x">docs</a>' in html
    assert "echo '&lt;not a tag&gt;'" in html
