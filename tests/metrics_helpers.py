"""Scrape and read Prometheus expositions in tests."""

import re
import shutil
import subprocess
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(url, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, ((label, value), ...)): value}"""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(parsed: dict, name: str, **labels) -> float:
    return parsed.get((name, tuple(sorted(labels.items()))), 0.0)


def promtool_check(text: str) -> str:
    promtool = shutil.which("promtool")
    assert promtool, (
        "promtool is missing: run monitoring/install-tools.sh (Debian package 'prometheus')"
    )
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


ALLOWED_LABELS = {
    "route",
    "method",
    "status",
    "exception_type",
    "location",
    "from_status",
    "to_status",
    "result",
    "type",
    "reason",
    "scope",
    "kind",
    "code",
    "task",
    "outcome",
    "le",
    "quantile",
    # prometheus-client's own process/platform collectors (single-process mode only)
    "generation",
    "implementation",
    "major",
    "minor",
    "patchlevel",
    "version",
}
_SUSPICIOUS = [
    re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I),  # UUID
    re.compile(r"@"),  # e-mail
    re.compile(r"^\d{3,}$"),  # a bare id (status codes are 3 digits: checked separately)
    re.compile(r"/\d+(/|$)"),  # a raw path with an id in it
]


def cardinality_problems(parsed: dict) -> list[str]:
    problems = []
    for name, labels in parsed:
        for label, val in labels:
            if label not in ALLOWED_LABELS:
                problems.append(f"{name}: label {label!r} not in the allow-list")
            if label in ("le", "quantile") or (
                label == "status" and re.fullmatch(r"[1-5]\d\d", val)
            ):
                continue
            if any(p.search(val) for p in _SUSPICIOUS):
                problems.append(f"{name}: {label}={val!r} looks like an id, e-mail or raw path")
    return problems


def poll(what: str, fetch, done, proc, timeout: float = 40):
    """fetch() until done(value), while `proc` (a tests.conftest.ScriptProcess) is alive; the
    last value (or error) goes into the failure message."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        proc.check_alive()
        try:
            last = fetch()
            if done(last):
                return last
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.3)
    raise AssertionError(
        f"{what}: not after {timeout}s; last: {str(last)[-2000:]}\n{proc.log()[-4000:]}"
    )


def series(text: str, metric: str, /, **labels) -> list[float]:
    """Values of the series `metric` whose labels include `labels`."""
    out = []
    for m in re.finditer(rf"^{re.escape(metric)}\{{(.*?)\}} (\S+)$", text, re.MULTILINE):
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1)))
        if all(found.get(k) == v for k, v in labels.items()):
            out.append(float(m.group(2)))
    return out
