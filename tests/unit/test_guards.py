"""P8 #15: a production process refuses debug mode, .env.example placeholders and an empty
host list (config/guards.py), and trusts a proxy's TLS header only when told to."""

import importlib
import re
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.guards import check_production, production_problems, proxy_ssl_header

ROOT = Path(__file__).resolve().parents[2]

SOUND = {
    "STOCKFLOW_ENV": "production",
    "DJANGO_SECRET_KEY": "Zq9!x" * 10,
    "DJANGO_ALLOWED_HOSTS": "stockflow.example.com",
    "DJANGO_DEBUG": "false",
    "METRICS_TOKEN": "a-real-long-token",
    "DATABASE_URL": "postgresql://stockflow:s3cret@db:5432/stockflow",
}


def test_a_sound_production_environment_passes():
    assert production_problems(SOUND) == []
    check_production(SOUND)


@pytest.mark.parametrize("debug", ["true", "1", "yes", "ON"])
def test_debug_is_refused(debug):
    with pytest.raises(ImproperlyConfigured, match="DJANGO_DEBUG must be off"):
        check_production({**SOUND, "DJANGO_DEBUG": debug})


@pytest.mark.parametrize("hosts", ["", " ", ",", " , "])
def test_an_empty_host_list_is_refused(hosts):
    with pytest.raises(ImproperlyConfigured, match="DJANGO_ALLOWED_HOSTS"):
        check_production({**SOUND, "DJANGO_ALLOWED_HOSTS": hosts})


def test_a_missing_secret_key_is_refused_as_before():
    env = {k: v for k, v in SOUND.items() if k != "DJANGO_SECRET_KEY"}
    with pytest.raises(RuntimeError, match="DJANGO_SECRET_KEY must be set"):
        check_production(env)


def _env_example() -> dict[str, str]:
    pairs = re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", (ROOT / ".env.example").read_text(), re.M)
    return dict(pairs)


def test_every_env_example_placeholder_is_refused_by_name():
    example = _env_example()
    placeholders = {name for name, value in example.items() if "change-me" in value}
    assert {"DJANGO_SECRET_KEY", "METRICS_TOKEN", "FLOWER_BASIC_AUTH"} <= placeholders
    # .env.example copied as it is, hosts filled in: every placeholder is named.
    with pytest.raises(ImproperlyConfigured) as refused:
        check_production({**example, "STOCKFLOW_ENV": "production"})
    message = str(refused.value)
    for name in placeholders:
        assert name in message, f"{name}={example[name]} is accepted in production"
    # And one at a time, each on an otherwise sound environment.
    for name in placeholders:
        problems = production_problems({**SOUND, name: example[name]})
        assert problems and name in problems[0], name


def test_a_placeholder_inside_a_url_is_refused_and_ordinary_values_are_not():
    problems = production_problems(
        {**SOUND, "DATABASE_URL": "postgresql://stockflow:CHANGE-ME@db/stockflow"}
    )
    assert problems and "DATABASE_URL" in problems[0]
    assert production_problems({**SOUND, "LOG_LEVEL": "change-me-not-a-secret"}) == []


def test_every_problem_is_named_at_once():
    env = {"STOCKFLOW_ENV": "production", "DJANGO_DEBUG": "true", "METRICS_TOKEN": "change-me"}
    assert len(production_problems(env)) == 4  # debug, secret key, hosts, placeholder


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", None),
        ("  ", None),
        ("X-Forwarded-Proto", ("HTTP_X_FORWARDED_PROTO", "https")),
        ("x-forwarded-proto", ("HTTP_X_FORWARDED_PROTO", "https")),
    ],
)
def test_the_proxy_ssl_header_is_only_trusted_when_named(value, expected):
    assert proxy_ssl_header(value) == expected


@pytest.fixture
def fresh_settings(monkeypatch):
    """config.settings evaluated again under a given environment, then restored."""

    def load(**env):
        for name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "SECURE_PROXY_SSL_HEADER"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        import config.settings

        return importlib.reload(config.settings)

    yield load
    monkeypatch.undo()
    import config.settings

    importlib.reload(config.settings)


def test_production_settings_do_not_trust_x_forwarded_proto_by_default(fresh_settings):
    production = {k: v for k, v in SOUND.items() if k != "DATABASE_URL"}
    assert fresh_settings(**production).SECURE_PROXY_SSL_HEADER is None
    behind_proxy = fresh_settings(**production, SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto")
    assert behind_proxy.SECURE_PROXY_SSL_HEADER == ("HTTP_X_FORWARDED_PROTO", "https")


def test_production_settings_refuse_debug(fresh_settings):
    production = {k: v for k, v in SOUND.items() if k != "DATABASE_URL"}
    with pytest.raises(ImproperlyConfigured, match="DJANGO_DEBUG"):
        fresh_settings(**{**production, "DJANGO_DEBUG": "true"})
