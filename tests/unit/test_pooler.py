"""DATABASE_POOLER=pgbouncer: the role aliases and connect queries (config/pooler.py), what
the settings send with and without it, and the PgBouncer config the harness writes. The
real PgBouncer runs in tests/integration/test_pgbouncer.py."""

import json
import runpy
import sys
from pathlib import Path

import pytest

import config
from config import pooler
from harness import pgbouncer

ROOT = Path(__file__).resolve().parents[2]
URL = "postgresql://app:s3cret@db.internal:5433/shop"


def load_settings(monkeypatch, module="config/settings.py", **env) -> dict:
    for key in ("DATABASE_POOLER", "PGOPTIONS", "STOCKFLOW_PROCESS", "DATABASE_DIRECT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DATABASE_URL", URL)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # tests/settings imports config.settings: afresh, and the suite's module back afterwards.
    # (the module and the package's attribute for it, which `import config.settings` reads).
    if "config.settings" in sys.modules:
        original = sys.modules["config.settings"]
        monkeypatch.setitem(sys.modules, "config.settings", original)
        monkeypatch.setattr(config, "settings", original, raising=False)
        del sys.modules["config.settings"]
    return runpy.run_path(str(ROOT / module))


@pytest.mark.parametrize("role", pooler.ROLES)
def test_aliases_name_one_pool_per_role_and_map_back(role):
    alias = pooler.alias("shop", role)
    assert pooler.database_of(alias, role) == "shop"
    assert (alias == "shop") is (role == "web")  # role-less connections get the web's


def test_unknown_roles_and_poolers_are_refused():
    with pytest.raises(ValueError):
        pooler.alias("shop", "beat")
    with pytest.raises(ValueError):
        pooler.database_of("shop", "worker")
    with pytest.raises(ValueError):
        pooler.check_pooler("pgpool")


def test_connect_query_sets_what_the_options_set_in_order():
    options = "-c lock_timeout=1500 -c statement_timeout=0 --search-path=a -clock_timeout=2s"
    assert pooler.connect_query(options) == (
        "SET lock_timeout = 1500; SET statement_timeout = 0; SET search_path = a; "
        "SET lock_timeout = '2s'"
    )
    assert pooler.connect_query("-c search_path='a b' -c x.y=\"it's\"") == (
        "SET search_path = 'a b'; SET x.y = 'it''s'"
    )


@pytest.mark.parametrize("options", ["lock_timeout=1", "-c lock_timeout", "-c 1x=2", "-c a;b=1"])
def test_connect_query_refuses_what_is_not_a_setting(options):
    with pytest.raises(ValueError):
        pooler.connect_query(options)


def test_without_a_pooler_the_options_are_the_startup_parameter_as_before(monkeypatch):
    s = load_settings(monkeypatch, PGOPTIONS="-c work_mem=8MB")
    db = s["DATABASES"]["default"]
    assert db["NAME"] == "shop"
    assert db["OPTIONS"]["options"] == (
        "-c lock_timeout=1500 -c statement_timeout=5000 -c idle_in_transaction_session_timeout=10000"
        " -c client_connection_check_interval=1000 -c work_mem=8MB"
    )
    assert "prepare_threshold" not in db["OPTIONS"]
    assert db["DISABLE_SERVER_SIDE_CURSORS"] is False


@pytest.mark.parametrize(("process", "role"), [("", "web"), ("manage", "manage")])
def test_behind_pgbouncer_the_role_is_the_database_alias(monkeypatch, process, role):
    s = load_settings(monkeypatch, DATABASE_POOLER="pgbouncer", STOCKFLOW_PROCESS=process)
    db = s["DATABASES"]["default"]
    assert db["NAME"] == pooler.alias("shop", role)
    assert "options" not in db["OPTIONS"]  # PgBouncer would refuse the connection
    assert db["OPTIONS"]["prepare_threshold"] is None
    assert db["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert (db["HOST"], db["PORT"]) == ("db.internal", 5433)


def test_test_settings_behind_pgbouncer_fall_back_to_direct_for_their_own_options(monkeypatch):
    pool_options = load_settings(monkeypatch, "tests/settings.py")["DB_SESSION_OPTIONS_BY_ROLE"]
    env = {
        "DATABASE_POOLER": "pgbouncer",
        "STOCKFLOW_USE_TEST_DATABASE": "1",
        "PGBOUNCER_SESSION_OPTIONS": json.dumps(pool_options),
        "DATABASE_DIRECT_URL": "postgresql://app:s3cret@127.0.0.1:5432/shop",
    }
    same = load_settings(monkeypatch, "tests/settings.py", **env)["DATABASES"]["default"]
    assert (same["NAME"], same["PORT"], same["OPTIONS"].get("options")) == ("test_shop", 5433, None)
    own = load_settings(monkeypatch, "tests/settings.py", PGOPTIONS="-c lock_timeout=200", **env)
    db = own["DATABASES"]["default"]
    assert (db["NAME"], db["HOST"], db["PORT"]) == ("test_shop", "127.0.0.1", 5432)
    assert db["OPTIONS"]["options"].endswith("-c lock_timeout=200 -c stockflow.allow_truncate=on")
    assert own["DATABASE_POOLER"] == ""


def test_the_harness_config_pools_each_role_in_transaction_mode(tmp_path):
    upstream = pgbouncer.Upstream.parse(URL)
    assert (upstream.host, upstream.port, upstream.user, upstream.database) == (
        "db.internal",
        5433,
        "app",
        "shop",
    )
    options = {"web": "-c lock_timeout=1500", "worker": "-c lock_timeout=5000"}
    bouncer = pgbouncer.PgBouncer(tmp_path, upstream, "127.0.0.1", 6441, options)
    text = pgbouncer.config_text(bouncer, ["shop"], 50, 3)
    assert "pool_mode = transaction" in text.splitlines()
    server = "host=db.internal port=5433 user=app"
    assert f"shop = {server} dbname=shop connect_query='SET lock_timeout = 1500'" in text
    assert f"shop_worker = {server} dbname=shop connect_query='SET lock_timeout = 5000'" in text
    assert "shop_manage" not in text  # no options given for it: no pool
    assert "s3cret" not in text  # the password is in the auth file only
    assert bouncer.url_for("shop", "worker") == "postgresql://app:s3cret@127.0.0.1:6441/shop_worker"
