"""What a production process refuses to start with. Settings call `check_production` with
the environment when STOCKFLOW_ENV=production: a misconfigured deployment stops at
startup naming every problem at once, instead of running in debug mode, with a secret
copied from .env.example, or answering any Host header."""

import re
from collections.abc import Mapping

from django.core.exceptions import ImproperlyConfigured

from config.env import TRUE

# .env.example's marker for every value an operator must replace.
PLACEHOLDER = "change-me"
# Variables that hold secrets: those .env.example lists (DJANGO_SECRET_KEY, METRICS_TOKEN,
# FLOWER_BASIC_AUTH, GRAFANA_ADMIN_PASSWORD, POSTGRES_PASSWORD, ...), URLs that embed a
# password (DATABASE_URL), and any other whose name says it is one.
_SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|_KEY$|BASIC_AUTH|DSN|WEBHOOK|_URL$")


class InsecureProductionSettings(ImproperlyConfigured, RuntimeError):
    """ImproperlyConfigured; also a RuntimeError, as the missing-secret-key refusal was."""


def production_problems(environ: Mapping[str, str]) -> list[str]:
    problems = []
    if environ.get("DJANGO_DEBUG", "").strip().lower() in TRUE:
        problems.append("DJANGO_DEBUG must be off (debug pages show settings and local variables)")
    if not environ.get("DJANGO_SECRET_KEY", "").strip():
        problems.append("DJANGO_SECRET_KEY must be set (50 random characters)")
    if not [h for h in environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if h.strip()]:
        problems.append("DJANGO_ALLOWED_HOSTS must name the site's host names (comma-separated)")
    placeholders = sorted(
        name
        for name, value in environ.items()
        if _SECRET_NAME.search(name) and PLACEHOLDER in value.lower()
    )
    if placeholders:
        problems.append(
            f"{', '.join(placeholders)} still hold the .env.example placeholder "
            f"({PLACEHOLDER}): set real secrets"
        )
    return problems


def check_production(environ: Mapping[str, str]) -> None:
    problems = production_problems(environ)
    if problems:
        raise InsecureProductionSettings(
            "STOCKFLOW_ENV=production refuses to start:\n  - " + "\n  - ".join(problems)
        )


def proxy_ssl_header(header: str) -> tuple[str, str] | None:
    """SECURE_PROXY_SSL_HEADER from the name of the header the TLS-terminating proxy sets
    (e.g. `X-Forwarded-Proto`); none without one: a client could send it itself."""
    header = header.strip()
    if not header:
        return None
    return ("HTTP_" + header.upper().replace("-", "_"), "https")
