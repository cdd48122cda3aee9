"""Parsing of environment variables into settings values: one rule per type, shared by
every setting, so that "yes", "1" and "true" mean the same everywhere."""

import ipaddress
import os

TRUE = frozenset({"1", "true", "yes", "on"})


def env_bool(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in TRUE


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_list(name: str, default: str = "") -> list[str]:
    """Comma-separated values, blanks dropped."""
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_networks(name: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Comma-separated addresses or CIDRs; a bad one raises ValueError at startup."""
    return [ipaddress.ip_network(item) for item in env_list(name)]
