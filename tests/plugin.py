"""The test suite's setup, loaded before Django's settings (`-p tests.plugin`).

Integration and system tests need PostgreSQL and Redis: when DATABASE_URL / REDIS_URL
are unset, stockflow's embedded servers are started here, before pytest-django reads
the settings. A run of the unit tier alone starts nothing.
"""

from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent / "unit"


def _unit_only(args: list[str]) -> bool:
    paths = [Path(a.split("::", 1)[0]).resolve() for a in args if not a.startswith("-")]
    return bool(paths) and all(p == UNIT or UNIT in p.parents for p in paths)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    if not _unit_only(args):
        from harness.embedded import ensure_services

        ensure_services()
    from stockflow.observability.bootstrap import bootstrap

    bootstrap("manage")  # JSON logs through structlog, as every stockflow process has them
