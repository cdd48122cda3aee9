"""Personal data never reaches a log line or a Sentry event: stockflow/observability/pii.py."""

import pytest

from stockflow.observability.pii import (
    _MAYBE,
    _PATTERNS,
    REDACTED,
    is_pii_key,
    mask_text,
    scrub,
    structlog_processor,
)


@pytest.mark.parametrize(
    "key",
    ["name", "Email", "phone-number", "customer_email", "HTTP_AUTHORIZATION", "api_token", "ip",
     "date_of_birth", "notes", "password", "sessionid"],
)  # fmt: skip
def test_personal_keys_are_recognised_whatever_their_case(key):
    assert is_pii_key(key)


@pytest.mark.parametrize("key", ["sku", "sale_id", "request_id", "status", "quantity", "event"])
def test_business_keys_are_not(key):
    assert not is_pii_key(key)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("mail ana.lima@example.com now", f"mail {REDACTED} now"),
        ("from 203.0.113.7 via proxy", f"from {REDACTED} via proxy"),
        ("v6 2001:db8:0:0:0:0:0:1 here", f"v6 {REDACTED} here"),
        ("v6 short fe80::1:2 here", f"v6 short {REDACTED} here"),
        ("call +44 20 7946 0958 please", f"call {REDACTED} please"),
        ("token sf_abcdefghijklmnopqrstuvwxyz0123", f"token {REDACTED}"),
    ],
)
def test_personal_data_inside_any_string_is_masked(text, masked):
    assert mask_text(text) == masked


@pytest.mark.parametrize(
    "text",
    ["ana.lima@example.com", "203.0.113.7", "2001:db8:0:0:0:0:0:1", "fe80::1:2", "+44 20 7946 0958",
     "+351912345678", "sf_abcdefghijklmnopqrstuvwxyz0123", "a.b@c.io", "1.2.3.4"],
)  # fmt: skip
def test_the_cheap_prefilter_never_skips_what_a_pattern_would_mask(text):
    # The speed of the scrubber rests on this pre-check; it must stay a necessary condition.
    assert _PATTERNS.search(text) and _MAYBE.search(text)


def test_ordinary_values_pass_unchanged():
    for text in ("sale.paid", "job 8f14e45f-ceea-467a-9575-1d3e5f6ad8a1", "LOT-7", "3 of 5"):
        assert mask_text(text) == text


def test_scrub_reaches_any_depth_and_keeps_structure():
    event = {
        "sale_id": 7,
        "lead": {"name": "Ana", "email": "ana@example.com", "source": "web"},
        "lines": [{"sku": "A", "note": "call me"}, ("ip 198.51.100.2", 3)],
        "message": "failed for bob@example.org",
    }
    assert scrub(event) == {
        "sale_id": 7,
        "lead": {"name": REDACTED, "email": REDACTED, "source": "web"},
        "lines": [{"sku": "A", "note": REDACTED}, (f"ip {REDACTED}", 3)],
        "message": f"failed for {REDACTED}",
    }
    assert event["lead"]["name"] == "Ana"  # a copy: the caller's data is untouched


def test_the_log_processor_keeps_its_own_fields_and_scrubs_the_rest():
    out = structlog_processor(
        None, "info", {"timestamp": "t", "level": "info", "event": "lead", "email": "x@y.io"}
    )
    assert out == {"timestamp": "t", "level": "info", "event": "lead", "email": REDACTED}
