"""The monitoring kit as data: its rule files and dashboards, the PromQL they hold and the
metric names that PromQL selects (read by monitoring/integration.py and the kit's tests)."""

import json
import re
from pathlib import Path

import yaml

MON = Path(__file__).resolve().parent
PROM = MON / "prometheus"
RULE_FILES = sorted((PROM / "rules").glob("*.yml"))
DASHBOARDS = sorted((MON / "grafana" / "dashboards").glob("*.json"))

# Series Prometheus makes itself (per target, or for alerts).
PROMETHEUS_BUILTINS = {
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
    "ALERTS",
    "ALERTS_FOR_STATE",
}


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def rules() -> list[tuple[Path, dict]]:
    return [(f, r) for f in RULE_FILES for g in load_yaml(f)["groups"] for r in g["rules"]]


def recording_names() -> set[str]:
    return {r["record"] for _, r in rules() if "record" in r}


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NOT_METRICS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (syntax is left to promtool)."""
    names = set(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))
    s = _STRING.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges and subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+-?\w+", " ", s)
    for m in re.finditer(r"(?<![\w$.:])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", s):
        if not m.group(2) and m.group(1).lower() not in _NOT_METRICS:
            names.add(m.group(1))
    return names


def dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in DASHBOARDS}


def panels(dashboard: dict):
    for p in dashboard["panels"]:
        yield p
        yield from p.get("panels", [])  # collapsed rows keep their panels inside


def dashboard_exprs() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) for every panel target and query variable."""
    out = []
    for name, d in dashboards().items():
        for p in panels(d):
            for t in p.get("targets", []):
                out.append((name, p["title"], t.get("expr", "")))
        for v in d.get("templating", {}).get("list", []):
            query = v.get("query")
            query = query.get("query", "") if isinstance(query, dict) else (query or "")
            if v.get("type") == "query":
                m = re.match(r"\s*label_values\((.*),\s*\w+\s*\)\s*$", query)
                out.append((name, f"variable {v.get('name')}", m.group(1) if m else query))
    return out
