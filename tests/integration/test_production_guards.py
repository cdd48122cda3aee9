"""P8 #15: `manage.py check` under STOCKFLOW_ENV=production refuses to start with debug on,
a .env.example placeholder for a secret, or no allowed hosts (config/guards.py)."""

import os
import subprocess
import sys

import pytest

from harness.processes import ROOT

SOUND = {
    "STOCKFLOW_ENV": "production",
    "DJANGO_SETTINGS_MODULE": "config.settings",
    "DJANGO_SECRET_KEY": "k" * 20 + "-Zq9!x" * 10,
    "DJANGO_ALLOWED_HOSTS": "stockflow.example.com",
    "DJANGO_DEBUG": "false",
}


def check(**env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env={**os.environ, **SOUND, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DJANGO_DEBUG": "true"}, "DJANGO_DEBUG must be off"),
        ({"DJANGO_SECRET_KEY": "change-me-to-50-random-characters"}, "DJANGO_SECRET_KEY"),
        ({"METRICS_TOKEN": "change-me"}, "METRICS_TOKEN"),
        ({"FLOWER_BASIC_AUTH": "admin:change-me"}, "FLOWER_BASIC_AUTH"),
        ({"DJANGO_ALLOWED_HOSTS": ""}, "DJANGO_ALLOWED_HOSTS must name"),
    ],
    ids=["debug", "secret-key-placeholder", "metrics-token", "flower-auth", "no-hosts"],
)
def test_production_refuses_to_start_insecurely(env, message):
    result = check(**env)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "STOCKFLOW_ENV=production refuses to start" in result.stderr, result.stderr[-2000:]
    assert message in result.stderr, result.stderr[-2000:]


def test_a_sound_production_environment_starts():
    result = check()
    assert result.returncode == 0, result.stdout + result.stderr
