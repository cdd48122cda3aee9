"""compose/docker-compose.yml kept honest without Docker: every stockflow service runs
what the Procfile runs, every mounted file exists, every service has a healthcheck (or
says why not), depends_on waits on conditions, and the monitoring configs, secrets and
.env.example agree with it. No database needed."""

import configparser
import os
import re
import runpy
from pathlib import Path

import pytest

from config import pooler

try:
    import yaml
except ImportError:  # pragma: no cover
    pytest.fail(
        "PyYAML is missing: add `pyyaml` to the test extras in pyproject.toml and re-lock",
        pytrace=False,
    )

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
MON = ROOT / "monitoring"

SERVICES = {
    "postgres",
    "redis",
    "migrate",
    "web",
    "worker",
    "beat",
    "flower",
    "celery-exporter",
    "prometheus",
    "alertmanager",
    "grafana",
    "rabbitmq",  # profile `rabbitmq`: the broker when CELERY_BROKER_URL is amqp://
    "pgbouncer",  # transaction pooling between the app processes and PostgreSQL
    "worker-shard-0",  # profile `sharded`: the workers of one shard's queue (JOB_ROUTING=hash)
    "worker-shard-1",
}
# Procfile commands compose runs from an upstream image instead: command -> service
# (checked in test_celery_exporter_matches_bin_celery_exporter).
PROCFILE_FROM_OTHER_IMAGE = {"bin/celery-exporter": "celery-exporter"}
# manage.py commands a one-shot service may run: Django's own, plus stockflow's.
DJANGO_COMMANDS = {"migrate", "check"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def procfile() -> dict[str, str]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            entries[name.strip()] = command.strip()
    return entries


def stockflow_services(services) -> dict:
    """Services built from compose/Dockerfile (stockflow's own image)."""
    return {n: s for n, s in services.items() if "build" in s}


def command_list(service) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else list(command)


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            values[m.group(1)] = m.group(2)
    return values


def host_path(source: str) -> Path:
    return (COMPOSE_DIR / source).resolve()


def mounts(service) -> list[tuple[str, str]]:
    """(source, container path) of every volume entry (short syntax)."""
    out = []
    for v in service.get("volumes", []):
        source, _, rest = v.partition(":")
        out.append((source, rest.split(":")[0]))
    return out


def container_to_host(service, container_path: str) -> Path | None:
    for source, target in mounts(service):
        if source.startswith(".") and (
            container_path == target or container_path.startswith(target + "/")
        ):
            return host_path(source) / os.path.relpath(container_path, target)
    return None


def test_the_stack_has_every_service(services):
    assert set(services) == SERVICES


def test_stockflow_services_run_the_procfile_entry_points(services):
    proc = procfile()
    by_command = {command: name for name, command in proc.items()}
    for name, service in stockflow_services(services).items():
        cmd = command_list(service)
        assert cmd, f"{name}: no command"
        if cmd[:2] == ["python", "manage.py"]:
            # One-shot management commands (migrate) are entry points too.
            command = cmd[2]
            own = list(ROOT.glob(f"api/*/management/commands/{command}.py"))
            assert command in DJANGO_COMMANDS or own, f"{name}: unknown manage.py command {command}"
            continue
        script = ROOT / cmd[0]
        assert cmd[0].startswith("bin/") and script.is_file() and os.access(script, os.X_OK), (
            f"{name}: command {cmd} is not an executable bin/ script"
        )
        joined = " ".join(cmd)
        assert joined in by_command, f"{name}: `{joined}` is not a Procfile entry ({proc})"
        # worker-shard-N: the Procfile's worker, on one shard's queues.
        assert name.split("-shard-")[0] == by_command[joined], (
            f"{name}: runs the Procfile entry `{by_command[joined]}`"
        )
    # ...and everything the Procfile runs also runs in compose.
    running = {" ".join(command_list(s)) for s in stockflow_services(services).values()}
    for entry, command in proc.items():
        if command in PROCFILE_FROM_OTHER_IMAGE:
            assert PROCFILE_FROM_OTHER_IMAGE[command] in services
        else:
            assert command in running, f"Procfile `{entry}: {command}` has no compose service"


def test_web_is_a_production_server(services):
    assert command_list(services["web"]) == ["bin/web"]
    assert "gunicorn" in (ROOT / "bin/web").read_text()
    assert "runserver" not in COMPOSE_FILE.read_text()


def test_celery_exporter_matches_bin_celery_exporter(services):
    exporter = services["celery-exporter"]
    image, _, tag = exporter["image"].partition(":")
    assert image == "danihodovic/celery-exporter" and tag, exporter["image"]
    lock = ROOT / "exporter/requirements.lock"
    if lock.exists():
        assert f"prometheus-exporter-celery=={tag}\n" in lock.read_text(), (
            "compose's exporter image and exporter/requirements.lock disagree on the version"
        )
    args = " ".join(command_list(exporter))
    # kombu restores unacked messages older than the consumer's visibility timeout:
    # the exporter must use the workers' value (config/settings.py).
    default = re.search(
        r'env_int\("CELERY_VISIBILITY_TIMEOUT", (\d+)\)', (ROOT / "config/settings.py").read_text()
    )
    assert default, "config/settings.py no longer reads CELERY_VISIBILITY_TIMEOUT"
    assert f"visibility_timeout=${{CELERY_VISIBILITY_TIMEOUT:-{default.group(1)}}}" in args
    for flag in ("--accept-content=json", "--retry-interval="):
        assert flag in args
    assert "redis://redis:" in args
    # The exporter watches every queue a worker consumes (jobs and periodic work).
    worker_queues = re.search(
        r'--queues "\$\{WORKER_QUEUES:-([^}]*)\}"', (ROOT / "bin/worker").read_text()
    ).group(1)
    exporter_queues = re.search(
        r'--queues "\$\{EXPORTER_QUEUES:-([^}]*)\}"', (ROOT / "bin/celery-exporter").read_text()
    ).group(1)
    assert exporter_queues == worker_queues
    assert f"--queues={worker_queues}" in args


def test_every_service_has_a_healthcheck_or_a_reason(services):
    for name, service in services.items():
        check = service.get("healthcheck")
        if check and not check.get("disable"):
            assert check.get("test"), f"{name}: healthcheck without test"
        else:
            reason = service.get("x-healthcheck-reason", "")
            assert len(reason.split()) >= 5, f"{name}: no healthcheck and no x-healthcheck-reason"


def test_depends_on_waits_on_conditions(services):
    for name, service in services.items():
        deps = service.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must be the long form with conditions"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            condition = (spec or {}).get("condition")
            assert condition in CONDITIONS, f"{name} -> {dep}: condition {condition!r}"
            target = services[dep]
            if condition == "service_healthy":
                assert target.get("healthcheck"), (
                    f"{name} waits for {dep} to be healthy; it has no healthcheck"
                )
            if condition == "service_completed_successfully":
                assert target.get("restart") == "no", f"{dep} is waited for as a one-shot job"
    for name in ("web", "worker", "beat"):
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == deps["redis"]["condition"] == "service_healthy"
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["pgbouncer"]["condition"] == "service_healthy"


def test_mounted_files_and_build_files_exist(compose, services):
    declared = set(compose.get("volumes", {}))
    for name, service in services.items():
        for source, _target in mounts(service):
            if source.startswith(".") or source.startswith("/"):
                assert host_path(source).exists(), f"{name}: mounts missing {source}"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
        for arg in command_list(service):
            m = re.match(r"--config\.file=(.+)", arg)
            if m:
                local = container_to_host(service, m.group(1))
                assert local and local.is_file(), f"{name}: {arg} is not a mounted repository file"
        build = service.get("build")
        if build:
            context = host_path(build["context"])
            dockerfile = context / build["dockerfile"]
            assert dockerfile.is_file()
            for line in dockerfile.read_text().splitlines():
                m = re.match(r"^COPY\s+(?!--from)(.+)\s+\S+$", line)
                if m:
                    for src in m.group(1).split():
                        assert (context / src).exists(), f"Dockerfile copies missing {src}"


def test_grafana_and_prometheus_configs_point_at_compose(services):
    grafana = services["grafana"]
    provider = yaml.safe_load((MON / "grafana/provisioning/dashboards/stockflow.yml").read_text())
    for p in provider["providers"]:
        local = container_to_host(grafana, p["options"]["path"])
        assert local and list(local.glob("*.json")), (
            f"dashboard path {p['options']['path']} is not mounted"
        )
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert container_to_host(grafana, home).is_file()
    datasource = yaml.safe_load(
        (MON / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    url = datasource["datasources"][0]["url"]
    assert url == "http://prometheus:9090"

    prom_cfg = yaml.safe_load((MON / "prometheus/prometheus.yml").read_text())
    for am in prom_cfg["alerting"]["alertmanagers"]:
        for target in am["static_configs"][0]["targets"]:
            assert target.split(":")[0] in services


def _ports_of(service) -> set[str]:
    ports = {str(p) for p in service.get("expose", [])}
    ports |= {str(p).split(":")[-1] for p in service.get("ports", [])}
    ports |= {str(v) for k, v in service.get("environment", {}).items() if k.endswith("PORT")}
    return ports


def test_scrape_targets_are_compose_services_on_their_ports(services):
    for path in sorted((MON / "prometheus/targets").glob("*.yml")):
        for group in yaml.safe_load(path.read_text()):
            for target in group["targets"]:
                host, _, port = target.partition(":")
                assert host in services, f"{path.name}: {host} is not a compose service"
                assert port in _ports_of(services[host]), (
                    f"{path.name}: {host} does not listen on {port}"
                )
    worker_env = services["worker"]["environment"]
    assert worker_env["WORKER_METRICS_ADDR"] == "0.0.0.0", (
        "the worker's metrics must be reachable on the network"
    )


def test_secrets_are_declared_mounted_and_templated(compose, services):
    declared = compose["secrets"]
    example = env_example()
    for name, spec in declared.items():
        assert spec.get("environment") in example, (
            f"secret {name}: variable missing from .env.example"
        )
    users = {
        "prometheus": (MON / "prometheus/prometheus.yml").read_text(),
        "alertmanager": (MON / "alertmanager/alertmanager.yml").read_text(),
    }
    for name, service in services.items():
        text = users.get(name, "") + " ".join(
            str(v) for v in service.get("environment", {}).values()
        )
        for secret in set(re.findall(r"/run/secrets/(\w+)", text)):
            assert secret in declared, f"{name} reads undeclared secret {secret}"
            assert secret in service.get("secrets", []), (
                f"{name} reads secret {secret} it does not mount"
            )


def test_env_example_covers_compose_and_holds_no_secrets(services):
    example = env_example()
    # `$${NAME}` is the container's own variable (compose's escape), not interpolated.
    used = set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", COMPOSE_FILE.read_text()))
    assert used <= set(example), (
        f"compose uses variables .env.example lacks: {sorted(used - set(example))}"
    )
    for name, service in services.items():
        for env_file in service.get("env_file", []):
            path = env_file["path"] if isinstance(env_file, dict) else env_file
            assert host_path(path) == ROOT / ".env", f"{name}: env_file {path}"
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    for key, value in example.items():
        if re.search(r"PASSWORD|TOKEN|SECRET|_KEY$|WEBHOOK|DSN|BASIC_AUTH", key):
            assert value == "" or "change-me" in value, (
                f".env.example {key} looks like a real secret"
            )
    # Prometheus scrapes the web by its service name: Django must accept that host.
    assert "web" in example["DJANGO_ALLOWED_HOSTS"].split(",")


# --- PgBouncer (docs/pgbouncer.md) ---------------------------------------------------------

PGBOUNCER_INI = COMPOSE_DIR / "pgbouncer.ini"
APP_DB = (
    "postgresql://${POSTGRES_USER:-stockflow}:${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in .env}@"
)


def pgbouncer_ini() -> configparser.ConfigParser:
    ini = configparser.ConfigParser(delimiters=("=",), comment_prefixes=(";",), interpolation=None)
    ini.optionxform = str  # database names keep their case
    ini.read_string(PGBOUNCER_INI.read_text())
    return ini


def test_app_services_reach_postgresql_through_pgbouncer_and_migrate_directly(services):
    for name in ("web", "worker", "beat"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"] == APP_DB + "pgbouncer:6432/${POSTGRES_DB:-stockflow}", name
        assert env["DATABASE_POOLER"] == "pgbouncer", name
    migrate = services["migrate"]["environment"]
    assert migrate["DATABASE_URL"] == APP_DB + "postgres:5432/${POSTGRES_DB:-stockflow}"
    assert migrate["DATABASE_POOLER"] == ""
    assert "pgbouncer" not in services["migrate"]["depends_on"]


def test_pgbouncer_pools_transactions_with_the_settings_timeouts_per_role(services, monkeypatch):
    pgbouncer = services["pgbouncer"]
    assert ("./pgbouncer.ini", "/etc/stockflow/pgbouncer.ini") in mounts(pgbouncer)
    assert "/etc/stockflow/pgbouncer.ini" in " ".join(command_list(pgbouncer))
    assert "postgres_password" in pgbouncer["secrets"]
    ini = pgbouncer_ini()
    assert ini["pgbouncer"]["pool_mode"] == "transaction"
    assert ini["pgbouncer"]["listen_port"] == "6432"
    # The roles' session options at the settings' defaults, as a direct connection has them.
    for key in [k for k in os.environ if k.endswith("_TIMEOUT_MS")] + ["PGOPTIONS"]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://stockflow@postgres:5432/stockflow")
    settings = runpy.run_path(str(ROOT / "config/settings.py"))
    databases = ini["databases"]
    assert len(databases) == len(pooler.ROLES)
    for role in pooler.ROLES:
        entry = databases[pooler.alias("@POSTGRES_DB@", role)]
        assert "dbname=@POSTGRES_DB@ " in entry and "host=postgres port=5432" in entry
        query = re.search(r"connect_query='([^']*)'", entry).group(1)
        assert query == pooler.connect_query(settings["DB_SESSION_OPTIONS_BY_ROLE"][role]), role


def test_each_shard_has_workers_of_its_own_on_its_queue(services):
    for shard in (0, 1):
        service = services[f"worker-shard-{shard}"]
        env = service["environment"]
        assert service["profiles"] == ["sharded"]
        assert env["WORKER_QUEUES"] == f"stockflow.jobs.shard.{shard},stockflow.periodic"
        assert service["deploy"]["replicas"] >= 2
        # The worker's own settings otherwise: the database through PgBouncer, the probe.
        assert env["DATABASE_POOLER"] == "pgbouncer"
        assert service["healthcheck"] == services["worker"]["healthcheck"]
        assert command_list(service) == ["bin/worker"]
    assert env_example()["JOB_SHARDS"] == "2"
