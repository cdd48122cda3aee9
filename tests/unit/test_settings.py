"""Settings are plain data read from the environment: config/env.py, config/settings.py,
and which entry points start the embedded servers (manage.py, the test plugin)."""

import importlib
import ipaddress
import runpy
from pathlib import Path

import pytest

from config.env import env_bool, env_int, env_list, env_networks
from tests import plugin

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", " yes ", "on"])
def test_true_spellings(monkeypatch, raw):
    monkeypatch.setenv("X_FLAG", raw)
    assert env_bool("X_FLAG") is True


@pytest.mark.parametrize("raw", ["0", "false", "no", "off", "", "maybe"])
def test_anything_else_is_false(monkeypatch, raw):
    monkeypatch.setenv("X_FLAG", raw)
    assert env_bool("X_FLAG", default=True) is False


def test_unset_takes_the_default(monkeypatch):
    monkeypatch.delenv("X_FLAG", raising=False)
    monkeypatch.delenv("X_NUM", raising=False)
    assert env_bool("X_FLAG", default=True) is True
    assert env_int("X_NUM", 42) == 42


def test_integers_parse_and_refuse_garbage(monkeypatch):
    monkeypatch.setenv("X_NUM", "300")
    assert env_int("X_NUM", 1) == 300
    monkeypatch.setenv("X_NUM", "5m")
    with pytest.raises(ValueError):
        env_int("X_NUM", 1)


def test_lists_drop_blanks_and_spaces(monkeypatch):
    monkeypatch.setenv("X_LIST", " a.example, ,b.example,")
    assert env_list("X_LIST") == ["a.example", "b.example"]
    monkeypatch.delenv("X_LIST")
    assert env_list("X_LIST", "*") == ["*"]
    assert env_list("X_LIST") == []


def test_networks_parse_addresses_and_cidrs_and_refuse_garbage(monkeypatch):
    monkeypatch.setenv("X_NETS", "10.0.0.0/8, 192.0.2.7 ,::1")
    assert env_networks("X_NETS") == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.0.2.7/32"),
        ipaddress.ip_network("::1/128"),
    ]
    monkeypatch.setenv("X_NETS", "10.0.0.300")
    with pytest.raises(ValueError):
        env_networks("X_NETS")


def _fresh_settings(monkeypatch, **env):
    for name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "STOCKFLOW_ENV"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def refuse(*args, **kwargs):
        raise AssertionError("importing settings must not start servers")

    monkeypatch.setattr("harness.embedded.ensure_services", refuse)
    import config.settings

    return importlib.reload(config.settings)


def test_importing_settings_without_urls_starts_nothing_and_points_nowhere(monkeypatch):
    settings = _fresh_settings(monkeypatch)
    db = settings.DATABASES["default"]
    assert db["HOST"] == "/nonexistent/set-DATABASE_URL"  # fails at once, naming the fix
    assert settings.REDIS_URL == settings.CELERY_BROKER_URL == "unix:///nonexistent/set-REDIS_URL"
    assert settings.LOGGING_CONFIG is None  # logging is the entry point's job


def test_settings_read_the_urls_and_the_broker_defaults_to_redis(monkeypatch):
    settings = _fresh_settings(
        monkeypatch,
        DATABASE_URL="postgresql://app@db.internal:6432/shop",
        REDIS_URL="redis://cache.internal:6379/2",
    )
    db = settings.DATABASES["default"]
    assert (db["HOST"], db["PORT"], db["NAME"], db["USER"]) == ("db.internal", 6432, "shop", "app")
    assert settings.CELERY_BROKER_URL == "redis://cache.internal:6379/2"


def test_production_refuses_to_start_without_a_secret_key(monkeypatch):
    monkeypatch.delenv("DJANGO_SECRET_KEY", raising=False)
    with pytest.raises(RuntimeError, match="DJANGO_SECRET_KEY"):
        _fresh_settings(monkeypatch, STOCKFLOW_ENV="production")


@pytest.fixture(autouse=True)
def _restore_settings_module(monkeypatch):
    yield
    monkeypatch.undo()  # this run's environment first, then the module as it has it
    import config.settings

    importlib.reload(config.settings)


@pytest.mark.parametrize(
    ("argv", "needs"),
    [
        (["manage.py"], False),
        (["manage.py", "help"], False),
        (["manage.py", "help", "migrate"], False),
        (["manage.py", "migrate", "--help"], False),
        (["manage.py", "check", "--deploy"], False),
        (["manage.py", "makemigrations", "--check"], False),
        (["manage.py", "migrate"], True),
        (["manage.py", "check_ledger"], True),
        (["manage.py", "create_api_token", "me"], True),
        (["manage.py", "shell"], True),
    ],
)
def test_manage_starts_servers_only_for_commands_that_connect(argv, needs):
    manage = runpy.run_path(str(ROOT / "manage.py"))  # not as __main__: defines, runs nothing
    assert manage["needs_services"](argv) is needs


@pytest.mark.parametrize(
    ("args", "unit_only"),
    [
        (["tests/unit"], True),
        (["tests/unit/test_pii.py::test_business_keys_are_not", "-q"], True),
        ([], False),  # the whole suite
        (["tests/unit", "tests/integration"], False),
        (["tests/integration/test_fefo.py"], False),
    ],
)
def test_the_test_plugin_starts_servers_unless_only_the_unit_tier_runs(
    args, unit_only, monkeypatch
):
    monkeypatch.chdir(ROOT)
    assert plugin._unit_only(args) is unit_only


@pytest.mark.parametrize(("env", "message"), [("sideways", "JOB_ROUTING"), ("hash", "JOB_SHARDS")])
def test_routing_refuses_what_it_cannot_route(monkeypatch, env, message):
    with pytest.raises(ValueError, match=message):
        _fresh_settings(monkeypatch, JOB_ROUTING=env, JOB_SHARDS="0" if env == "hash" else "4")
