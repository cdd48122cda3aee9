"""The unit tier: no PostgreSQL, no Redis, no subprocess. Anything that tries fails the
test at once, so a test that needs a service cannot hide here."""

import socket
import subprocess

import pytest


def _refuse(what):
    def refuse(*args, **kwargs):
        raise AssertionError(f"unit tests must not use {what}; move the test to tests/integration")

    return refuse


@pytest.fixture(autouse=True)
def _no_services(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _refuse("the network"))
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse("the network"))
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("subprocesses"))
