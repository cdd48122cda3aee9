#!/usr/bin/env python
"""Django's command line. Commands that touch the database or Redis get stockflow's
embedded servers when DATABASE_URL / REDIS_URL are unset; the others start nothing."""

import os
import sys

# Commands that never open a connection: `manage.py help` must not start a server.
WITHOUT_SERVICES = frozenset(
    {"help", "version", "check", "collectstatic", "findstatic", "diffsettings", "makemigrations",
     "startapp", "startproject", "makemessages", "compilemessages"}
)  # fmt: skip


def needs_services(argv: list[str]) -> bool:
    command = argv[1] if len(argv) > 1 else "help"
    return command not in WITHOUT_SERVICES and not {"-h", "--help", "--version"} & set(argv)


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ["STOCKFLOW_PROCESS"] = "manage"  # its database timeouts (config/settings.py)
    if needs_services(sys.argv):
        from harness.embedded import ensure_services

        ensure_services()
    from django.core.management import execute_from_command_line

    from stockflow.observability.bootstrap import bootstrap

    bootstrap("manage")
    execute_from_command_line(sys.argv)
