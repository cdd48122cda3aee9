"""Routing through PgBouncer in transaction pooling mode (DATABASE_POOLER=pgbouncer): pure
logic shared by config/settings.py, workers/signals.py and harness/pgbouncer.py.

Under transaction pooling a server connection serves many clients, one transaction at a
time, so no client may carry session state, and PgBouncer does not forward the libpq
startup parameter `options` that sets each role's timeouts on a direct connection. The
timeouts belong to the pool instead: PgBouncer has one database alias per process role,
each its own pool, whose `connect_query` SETs that role's session options on every server
connection it opens. The web's alias is the database's own name (what pytest-django and
anything role-less connects to, as a direct connection would get the web's timeouts);
the others are `<name>_<role>`.
"""

from __future__ import annotations

import re
import shlex

POOLERS = ("", "pgbouncer")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
# A bare number or word needs no quotes (PgBouncer's config quoting stays simple).
_BARE = re.compile(r"-?[0-9]+(\.[0-9]+)?|[A-Za-z_][A-Za-z0-9_]*")
ROLES = ("web", "worker", "manage")


def check_pooler(value: str) -> str:
    if value not in POOLERS:
        raise ValueError(f"DATABASE_POOLER={value!r}: expected one of {POOLERS}")
    return value


def alias(database: str, role: str) -> str:
    """The PgBouncer database a process of `role` connects to for `database`."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    return database if role == "web" else f"{database}_{role}"


def database_of(alias_name: str, role: str) -> str:
    """The database behind `role`'s alias (alias() undone)."""
    suffix = "" if role == "web" else f"_{role}"
    if not alias_name.endswith(suffix):
        raise ValueError(f"{alias_name!r} is not the {role} alias of a database")
    return alias_name[: len(alias_name) - len(suffix)]


def settings_of(options: str) -> list[tuple[str, str]]:
    """(name, value) pairs of a libpq `options` string: `-c name=value` or `--name=value`."""
    words, pairs = shlex.split(options), []
    while words:
        word = words.pop(0)
        if word == "-c" and words:
            word = words.pop(0)
        elif word.startswith("-c"):
            word = word[2:]
        elif word.startswith("--"):
            word = word[2:].replace("-", "_")
        else:
            raise ValueError(f"not a `-c name=value` setting in options: {word!r}")
        name, sep, value = word.partition("=")
        if not sep or not _NAME.fullmatch(name):
            raise ValueError(f"not a `name=value` setting in options: {word!r}")
        pairs.append((name, value))
    return pairs


def connect_query(options: str) -> str:
    """The SET statements that give a server connection what `options` gives a direct one
    (the later of two settings of a name wins, as in `options`)."""
    return "; ".join(f"SET {name} = {_literal(value)}" for name, value in settings_of(options))


def _literal(value: str) -> str:
    if _BARE.fullmatch(value):
        return value
    return "'" + value.replace("'", "''") + "'"
