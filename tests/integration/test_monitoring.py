"""The operations kit in monitoring/, checked by the real tools (promtool, amtool) and by
reading it: alert coverage by promtool tests, annotations and runbooks, routing, and
every metric name a rule or dashboard panel uses.

The tools come from Debian packages: monitoring/install-tools.sh. They are required,
never skipped. No database needed.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from monitoring.kit import (
    DASHBOARDS,
    PROM,
    PROMETHEUS_BUILTINS,
    RULE_FILES,
    dashboard_exprs,
    dashboards,
    load_yaml,
    panels,
    promql_metric_names,
    recording_names,
    rules,
)
from monitoring.snapshot import SNAPSHOT, SNAPSHOT_TARGETS, names_of, read_snapshot

try:
    import yaml
except ImportError:  # pragma: no cover
    pytest.fail(
        "PyYAML is missing: add `pyyaml` to the test extras in pyproject.toml and re-lock",
        pytrace=False,
    )

ROOT = Path(__file__).resolve().parents[2]
MON = ROOT / "monitoring"
TEST_FILES = sorted((PROM / "tests").glob("*_test.yml"))
AM_CONFIG = MON / "alertmanager" / "alertmanager.yml"
RUNBOOKS = MON / "runbooks"

SEED_ALERTS = {
    "APIHigh5xxRate",
    "SalePaidTransitionFailures",
    "StockConsumeFailures",
    "RefundFailures",
    "ThrottleDisabledOrNotWorking",
    "APILatencyP95High",
    "StockConsumeLatencyHigh",
    "OverRefundBlockedSpike",
    "IdempotencyConflictsSpike",
    "PublicLeads429Spike",
    "PublicLeadsCreationFailures",
}
WORKER_ALERTS = {
    "CeleryWorkerDown",
    "CeleryTaskFailureRateHigh",
    "CeleryRetryStorm",
    "JobBacklogGrowing",
    "OldestQueuedJobTooOld",
    "LedgerInvariantViolated",
}
# SPEC §5: slo label -> (alert name prefix, objective)
SLOS = {
    "sale-paid-availability": ("SalePaid", 0.999),
    "stock-consume-latency": ("StockConsumeLatency", 0.95),
    "refund-availability": ("Refund", 0.995),
    "refund-latency": ("RefundLatency", 0.95),
    "public-leads-availability": ("PublicLeads", 0.99),
}
BUSINESS_OUTCOMES = (
    "insufficient_stock",
    "expired_batch",
    "over_refund",
    "invalid_transition",
    "idempotent",
)
RECEIVERS = {"critical": "pagerduty,slack", "warning": "slack"}


# --- the metric names that exist: a scrape after a scripted run ----------------------------


def exposed_metric_names(targets=SNAPSHOT_TARGETS) -> set[str]:
    """Every series name web, worker and celery-exporter expose, per the snapshot."""
    snapshot = read_snapshot()
    return set().union(*(names_of(*snapshot[t]) for t in targets if t in snapshot))


# Declared by celery-exporter but never set with a Redis broker (it is filled for amqp/memory
# transports only): a `# TYPE` line without samples. No rule or panel may use these.
NEVER_FILLED = {"celery_active_consumer_count"}

# --- helpers ---------------------------------------------------------------------------


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: run monitoring/install-tools.sh "
            f"(Debian packages prometheus, prometheus-alertmanager)",
            pytrace=False,
        )
    return path


def run(cmd: list[str], cwd: Path = ROOT) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(cmd)} failed ({result.returncode}):\n{output}"
    return output


def alerts() -> dict[str, dict]:
    found = {}
    for _f, r in rules():
        if "alert" in r:
            assert r["alert"] not in found, f"alert {r['alert']} defined twice"
            found[r["alert"]] = r
    return found


def grafana_to_promql(expr: str) -> str:
    """Grafana's interval variables as PromQL durations."""
    return re.sub(
        r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}", "5m", expr
    )


# --- the real tools ----------------------------------------------------------------------


def test_prometheus_config_is_valid(tmp_path):
    """`promtool check config`, rule files and file_sd targets included. The scrape token
    lives in /run/secrets (compose): a copy points at a stand-in file so file checks run."""
    promtool = tool("promtool")
    copy = tmp_path / "prometheus"
    shutil.copytree(PROM, copy)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    text = (PROM / "prometheus.yml").read_text()
    for name in set(re.findall(r"/run/secrets/(\w+)", text)):
        (secrets / name).write_text("stand-in")
    (copy / "prometheus.yml").write_text(text.replace("/run/secrets/", f"{secrets}/"))
    out = run(
        [promtool, "check", "config", "--lint=all", "--lint-fatal", str(copy / "prometheus.yml")]
    )
    assert f"{len(RULE_FILES)} rule files found" in out, out


def test_rules_are_valid():
    run([tool("promtool"), "check", "rules", "--lint=all", "--lint-fatal", *map(str, RULE_FILES)])


def test_promtool_rule_unit_tests_pass():
    promtool = tool("promtool")
    assert TEST_FILES, "no promtool tests under monitoring/prometheus/tests"
    # One process per file, in parallel: the day-long SLO histories take a while.
    procs = {
        f: subprocess.Popen(
            [promtool, "test", "rules", f.name],
            cwd=f.parent,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for f in TEST_FILES
    }
    failures = []
    for f, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0 or "SUCCESS" not in out:
            failures.append(f"{f.name}:\n{out}")
    assert not failures, "promtool test rules failed:\n" + "\n".join(failures)


def test_alertmanager_config_is_valid():
    out = run([tool("amtool"), "check-config", str(AM_CONFIG)])
    assert "SUCCESS" in out


@pytest.mark.parametrize("severity", sorted(RECEIVERS))
def test_alertmanager_routes_each_severity(severity):
    """critical -> PagerDuty and a copy to Slack; warning -> Slack only."""
    run(
        [
            tool("amtool"),
            "config",
            "routes",
            "test",
            f"--config.file={AM_CONFIG}",
            f"--verify.receivers={RECEIVERS[severity]}",
            f"severity={severity}",
            "service=stockflow",
            "alertname=RoutingTest",
        ]
    )


def test_dashboard_expressions_parse_with_promtool(tmp_path):
    """Every panel query through Prometheus's own parser (as recording rules)."""
    exprs = dashboard_exprs()
    assert exprs
    group = {
        "name": "dashboards",
        "rules": [
            {"record": f"dashboard:expr_{i}", "expr": grafana_to_promql(e)}
            for i, (_, _, e) in enumerate(exprs)
        ],
    }
    path = tmp_path / "dashboards.yml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    result = subprocess.run(
        [tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True
    )
    if result.returncode != 0:
        where = "\n".join(f"  expr_{i}: {d} / {t}: {e}" for i, (d, t, e) in enumerate(exprs))
        pytest.fail(f"dashboard queries do not parse:\n{result.stdout}{result.stderr}\n{where}")


# --- alerts: the set, their tests, their words -------------------------------------------


def test_the_required_alerts_exist():
    names = set(alerts())
    slo_alerts = {
        f"{prefix}SLO{speed}Burn" for prefix, _ in SLOS.values() for speed in ("Fast", "Slow")
    }
    missing = (SEED_ALERTS | WORKER_ALERTS | slo_alerts) - names
    assert not missing, f"missing alerts: {sorted(missing)}"


def test_every_alert_has_a_firing_and_a_quiet_promtool_case():
    defined = alerts()
    cases = {name: {"fires": 0, "quiet": 0} for name in defined}
    for f in TEST_FILES:
        doc = load_yaml(f)
        loaded = set()
        for pattern in doc["rule_files"]:
            for rule_file in f.parent.glob(pattern):
                loaded |= {
                    r["alert"]
                    for g in load_yaml(rule_file)["groups"]
                    for r in g["rules"]
                    if "alert" in r
                }
        for group in doc["tests"]:
            for case in group.get("alert_rule_test", []):
                name = case["alertname"]
                assert name in defined, f"{f.name}: test for unknown alert {name}"
                # A quiet case for an alert the file does not load would pass vacuously.
                assert name in loaded, (
                    f"{f.name}: tests {name} without loading the rule file defining it"
                )
                cases[name]["fires" if case.get("exp_alerts") else "quiet"] += 1
    lacking = {n: c for n, c in cases.items() if not c["fires"] or not c["quiet"]}
    assert not lacking, f"alerts without a firing and a quiet test case: {lacking}"


def test_every_alert_has_severity_words_and_a_runbook():
    problems = []
    for name, rule in alerts().items():
        labels, ann = rule.get("labels", {}), rule.get("annotations", {})
        severity = labels.get("severity")
        if severity not in RECEIVERS:
            problems.append(f"{name}: severity {severity!r}")
        if labels.get("service") != "stockflow":
            problems.append(f"{name}: service label (grouping and inhibition use it)")
        for key in ("summary", "description"):
            if len(ann.get(key, "").split()) < 4:
                problems.append(f"{name}: {key} should say in words what is wrong")
        url = ann.get("runbook_url", "")
        m = re.match(r"^https://\S+/monitoring/runbooks/([\w.-]+\.md)(?:#([\w-]+))?$", url)
        if not m:
            problems.append(f"{name}: runbook_url {url!r}")
            continue
        path, anchor = RUNBOOKS / m.group(1), m.group(2)
        if not path.is_file():
            problems.append(f"{name}: runbook {path.relative_to(ROOT)} does not exist")
            continue
        text = path.read_text()
        if severity == "critical":
            # A page gets its own runbook, named after the alert.
            if m.group(1) != f"{name}.md" or anchor or not text.startswith(f"# {name}\n"):
                problems.append(f"{name}: a critical alert needs its own runbook {name}.md")
            for section in (
                "## What it means",
                "## First three checks",
                "## Mitigate",
                "## Verify recovery",
            ):
                if section not in text:
                    problems.append(f"{name}: runbook lacks '{section}'")
        elif anchor not in {
            re.sub(r"[^\w-]", "", h.lower().replace(" ", "-"))
            for h in re.findall(r"^#+ (.+)$", text, re.M)
        }:
            problems.append(f"{name}: no section #{anchor} in {m.group(1)}")
    assert not problems, "\n".join(problems)


def test_every_runbook_file_belongs_to_a_critical_alert():
    critical = {n for n, r in alerts().items() if r["labels"]["severity"] == "critical"}
    files = {p.stem for p in RUNBOOKS.glob("*.md")} - {"README", "warnings"}
    assert files == critical, f"orphan runbooks: {files - critical}; missing: {critical - files}"


def test_pages_never_count_business_outcomes():
    """Critical alerts and availability SLIs count server-side failures only."""
    exprs = [(n, r["expr"]) for n, r in alerts().items() if r["labels"]["severity"] == "critical"]
    exprs += [
        (f"{r['record']}{{slo={r['labels']['slo']}}}", r["expr"])
        for _, r in rules()
        if r.get("record", "").startswith("slo:sli_error") and "availability" in r["labels"]["slo"]
    ]
    for name, expr in exprs:
        for outcome in BUSINESS_OUTCOMES:
            assert outcome not in expr, f"{name} counts the business outcome {outcome}"
    for _, r in rules():
        if r.get("record", "").startswith("slo:sli_error") and "availability" in r["labels"]["slo"]:
            assert 'result="error"' in r["expr"], r


def test_slo_objectives_and_burn_rate_windows():
    objectives = {
        r["labels"]["slo"]: float(re.fullmatch(r"vector\(([\d.]+)\)", r["expr"]).group(1))
        for _, r in rules()
        if r.get("record") == "slo:objective:ratio"
    }
    assert objectives == {slo: obj for slo, (_, obj) in SLOS.items()}
    windows = {
        r["record"].removeprefix("slo:sli_error:ratio_rate")
        for _, r in rules()
        if r.get("record", "").startswith("slo:sli_error:ratio_rate")
    }
    assert {"5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d"} <= windows
    defined = alerts()
    for slo, (prefix, _) in SLOS.items():
        fast, slow = defined[f"{prefix}SLOFastBurn"], defined[f"{prefix}SLOSlowBurn"]
        assert fast["labels"] == {"severity": "critical", "service": "stockflow", "slo": slo}
        assert slow["labels"] == {"severity": "warning", "service": "stockflow", "slo": slo}

        def burns(rule, slo=slo):
            return set(
                re.findall(
                    rf'ratio_rate(\w+)\{{slo="{slo}"\}} / on\(slo\) \(1 - slo:objective:ratio\) > ([\d.]+)',
                    rule["expr"],
                )
            )

        assert burns(fast) == {("1h", "14.4"), ("5m", "14.4")}, fast["expr"]
        assert burns(slow) == {("6h", "6"), ("30m", "6"), ("1d", "3"), ("2h", "3")}, slow["expr"]


def test_inhibition_rules_name_existing_alerts():
    names = set(alerts())
    config = load_yaml(AM_CONFIG)
    for rule in config["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            m = re.fullmatch(r'alertname(=~|=)"(.+)"', matcher)
            if m:
                pattern = m.group(2) if m.group(1) == "=~" else re.escape(m.group(2))
                hits = [n for n in names if re.fullmatch(pattern, n)]
                assert hits, f"inhibit matcher {matcher} matches no alert"
                if m.group(1) == "=~" and "|" in pattern:
                    for alt in pattern.split("|"):
                        assert alt in names, f"inhibit matcher {matcher}: no alert {alt}"


def test_no_secret_is_committed_in_configs():
    am = AM_CONFIG.read_text()
    assert not re.search(
        r"^\s*(routing_key|service_key|api_url|slack_api_url|webhook_url):", am, re.M
    ), "Alertmanager secrets must be *_file references"
    assert re.search(r"routing_key_file:", am) and re.search(
        r"slack_api_url_file:|api_url_file:", am
    )
    prom = load_yaml(PROM / "prometheus.yml")
    for job in prom["scrape_configs"]:
        auth = job.get("authorization", {})
        assert "credentials" not in auth and "bearer_token" not in job, job["job_name"]


# --- metric names: rules and dashboards point only at what exists --------------------------


def test_promql_metric_name_extraction():
    assert promql_metric_names(
        'sum by (route, le) (rate(http_request_duration_seconds_bucket{route!~"/(healthz|readyz)"}[5m])) '
        '/ on(slo) group_left() (1 - slo:objective:ratio) and on() absent(up{job="x"}) offset 5m'
    ) == {"http_request_duration_seconds_bucket", "slo:objective:ratio", "up"}
    assert promql_metric_names("histogram_quantile(0.95, x_bucket) > bool 1e3 or vector(0)") == {
        "x_bucket"
    }
    assert promql_metric_names('{__name__="a_total", b="c"} * $var') == {"a_total"}


def _unknown_names(expr: str, known: set[str]) -> set[str]:
    return {n for n in promql_metric_names(expr) if n not in known}


def test_the_snapshot_covers_every_target():
    snapshot = read_snapshot()
    assert set(snapshot) == set(SNAPSHOT_TARGETS), sorted(snapshot)
    for target, (types, samples) in snapshot.items():
        assert types and samples, f"{target}: no families or no samples in {SNAPSHOT.name}"
        assert not {n for n in names_of(types, samples) if n.endswith("_created")}, target
    # The scripted run's failures made the fault-path series real (samples, not just declared).
    worker, exporter = snapshot["worker"][1], snapshot["celery-exporter"][1]
    for name in ("exceptions_total", "celery_task_retries_total", "sale_refund_rollback_total"):
        assert name in worker, (
            f"{name}: no sample in the worker's scrape: was the run's failure phase skipped?"
        )
    assert {"celery_task_retried_total", "celery_task_failed_total"} <= exporter
    assert not NEVER_FILLED & exporter, "a never-filled family has samples now: update NEVER_FILLED"
    assert exposed_metric_names() >= {"http_requests_total", "celery_worker_up", "stockflow_jobs"}


def test_no_rule_panel_or_runbook_uses_a_never_filled_family():
    texts = [f.read_text() for f in RULE_FILES + DASHBOARDS + sorted(RUNBOOKS.glob("*.md"))]
    for name in NEVER_FILLED:
        assert not any(name in t for t in texts), f"{name} is never set with a Redis broker"


def test_latency_slis_count_at_the_objective_bucket():
    """A latency SLO's `le` is its objective (SPEC §5), and every `le` a rule selects is a
    bucket boundary of that histogram as stockflow defines it."""
    from prometheus_client import Histogram

    from stockflow.observability import metrics

    bounds = {
        h._name: set(h._upper_bounds) for h in vars(metrics).values() if isinstance(h, Histogram)
    }
    objective = {
        "stock-consume-latency": ("sales_paid_stock_consume_duration_seconds", 0.5),
        "refund-latency": ("sale_refund_duration_seconds", 0.8),
    }
    seen = set()
    for _, r in rules():
        for hist, le in re.findall(r'(\w+)_bucket\{le="([^"]+)"\}', r["expr"]):
            if hist in bounds:
                assert float(le) in bounds[hist], (
                    f"{r.get('record') or r.get('alert')}: {hist} has no le={le} bucket"
                )
        slo = r.get("labels", {}).get("slo")
        if r.get("record", "").startswith("slo:sli_error") and slo in objective:
            hist, threshold = objective[slo]
            les = {
                float(le)
                for h, le in re.findall(r'(\w+)_bucket\{le="([^"]+)"\}', r["expr"])
                if h == hist
            }
            assert les == {threshold}, (
                f"{r['record']}{{slo={slo}}} counts at {les}, objective {threshold}"
            )
            seen.add(slo)
    assert seen == set(objective)


def test_rules_reference_only_exposed_metrics():
    known = exposed_metric_names() | PROMETHEUS_BUILTINS | recording_names()
    problems = [
        f"{r.get('record') or r.get('alert')} ({f.name}): {sorted(bad)}"
        for f, r in rules()
        if (bad := _unknown_names(r["expr"], known))
    ]
    assert not problems, "rules use metrics nobody exposes:\n" + "\n".join(problems)


def test_dashboards_reference_only_exposed_metrics():
    known = exposed_metric_names() | PROMETHEUS_BUILTINS | recording_names()
    problems = [
        f"{d} / {title}: {sorted(bad)}"
        for d, title, expr in dashboard_exprs()
        if (bad := _unknown_names(grafana_to_promql(expr), known))
    ]
    assert not problems, "panels use metrics nobody exposes:\n" + "\n".join(problems)


def test_every_recording_rule_is_used():
    used = set()
    for _, r in rules():
        used |= promql_metric_names(r["expr"])
    for _, _, expr in dashboard_exprs():
        used |= promql_metric_names(grafana_to_promql(expr))
    unused = recording_names() - used
    assert not unused, f"recording rules no alert, rule or panel uses: {sorted(unused)}"


# --- Grafana ---------------------------------------------------------------------------------


def test_four_dashboards_provisioned_against_the_datasource():
    ds = load_yaml(MON / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    uids = {d["uid"] for d in ds if d["type"] == "prometheus"}
    boards = dashboards()
    assert {d["title"] for d in boards.values()} == {
        "stockflow / System overview",
        "stockflow / Sales & stock",
        "stockflow / Refunds",
        "stockflow / Celery workers & queues",
    }
    assert len({d["uid"] for d in boards.values()}) == 4
    for name, d in boards.items():
        ids = [p["id"] for p in panels(d)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for p in panels(d):
            grid = p["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{name} / {p['title']}: wider than the grid"
            if p["type"] == "row":
                continue
            assert p["datasource"]["uid"] in uids, f"{name} / {p['title']}: unknown datasource"
            assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), (
                f"{name} / {p['title']}"
            )
