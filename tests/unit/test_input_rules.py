"""P8 input rules that need no server: the JSON body parser's content type, depth and NUL
checks (api/parser.py), location time zones (stockflow/platform/timezones.py), the price
pattern (api/schemas.py) and gunicorn's default bind (config/gunicorn.py)."""

import datetime
import importlib

import pydantic
import pytest
from django.core.exceptions import ValidationError

from api.parser import MAX_JSON_DEPTH, is_json, shape_problem
from api.schemas import SaleLineIn
from stockflow.platform import timezones


@pytest.mark.parametrize(
    ("content_type", "json"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("application/problem+json", True),
        ("text/plain", False),
        ("text/json", False),
        ("application/x-www-form-urlencoded", False),
        ("multipart/form-data; boundary=x", False),
        ("", False),
    ],
)
def test_only_json_content_types_are_parsed(content_type, json):
    assert is_json(content_type) is json


def nest(depth: int):
    value = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_depth_up_to_the_limit_passes_beyond_is_refused():
    assert shape_problem(nest(MAX_JSON_DEPTH)) is None
    assert "nested deeper" in shape_problem(nest(MAX_JSON_DEPTH + 1))
    assert "nested deeper" in shape_problem({"a": {"b": nest(MAX_JSON_DEPTH)}})
    # Far beyond the recursion limit: refused, without recursing.
    assert "nested deeper" in shape_problem(nest(50_000))


def test_nul_anywhere_is_refused():
    assert "NUL" in shape_problem({"lines": [{"sku": "a\x00"}]})
    assert "NUL" in shape_problem({"k\x00": 1})
    assert shape_problem({"lines": [{"sku": "a", "quantity": 1, "ok": None}]}) is None


@pytest.mark.parametrize("name", ["UTC", "Europe/Paris", "America/Argentina/Buenos_Aires"])
def test_iana_time_zones_are_valid(name):
    timezones.validate_timezone(name)
    assert timezones.zone(name).utcoffset(datetime.datetime(2026, 1, 1)) is not None


@pytest.mark.parametrize(
    "name", ["Mars/Olympus_Mons", "", "America", "../../etc/passwd", "/etc/localtime", "UTC\x00"]
)
def test_other_names_are_refused_and_read_as_utc(name):
    with pytest.raises(ValidationError, match="not a time zone"):
        timezones.validate_timezone(name)
    assert timezones.zone(name) is timezones.FALLBACK


@pytest.mark.parametrize("price", ["١٢", "１２.50", "12.٥٠", "12\n", "12.5 "])
def test_prices_are_ascii_digits(price):
    with pytest.raises(pydantic.ValidationError):
        SaleLineIn.model_validate({"sku": "A", "quantity": 1, "unit_price": price})
    assert SaleLineIn.model_validate({"sku": "A", "quantity": 1, "unit_price": "12.50"})


def test_gunicorn_binds_loopback_unless_told(monkeypatch):
    import config.gunicorn

    monkeypatch.delenv("BIND_HOST", raising=False)
    monkeypatch.delenv("PORT", raising=False)
    assert importlib.reload(config.gunicorn).bind == "127.0.0.1:8000"
    monkeypatch.setenv("BIND_HOST", "0.0.0.0")  # compose, inside its container
    monkeypatch.setenv("PORT", "8123")
    assert importlib.reload(config.gunicorn).bind == "0.0.0.0:8123"
    monkeypatch.undo()
    importlib.reload(config.gunicorn)  # leave it as the environment has it
