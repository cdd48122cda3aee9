"""The console's Flower link follows FLOWER_URL, else where bin/flower listens."""

import pytest

from api.console import views


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "http://127.0.0.1:5555"),
        ({"FLOWER_PORT": "5600"}, "http://127.0.0.1:5600"),
        ({"FLOWER_ADDRESS": "10.0.0.7", "FLOWER_PORT": "5601"}, "http://10.0.0.7:5601"),
        ({"FLOWER_ADDRESS": "0.0.0.0"}, "http://127.0.0.1:5555"),
        ({"FLOWER_ADDRESS": "::1", "FLOWER_PORT": "5602"}, "http://[::1]:5602"),
        (
            {"FLOWER_URL": "https://ops.example/flower/", "FLOWER_PORT": "5600"},
            "https://ops.example/flower",
        ),
        ({"FLOWER_URL": "javascript:alert(1)", "FLOWER_PORT": "5603"}, "http://127.0.0.1:5603"),
        ({"FLOWER_PORT": "not-a-port"}, "http://127.0.0.1:5555"),
    ],
)
def test_flower_link(monkeypatch, env, expected):
    for name in ("FLOWER_URL", "FLOWER_ADDRESS", "FLOWER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert views._url_from_env("FLOWER_URL", views._flower_default()) == expected
