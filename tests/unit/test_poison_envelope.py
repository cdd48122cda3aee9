"""Which broker payloads kombu's Redis channel could not build a Message from
(workers.poison.envelope_problem): those are set aside before delivery instead of raising
inside the worker's event loop."""

import base64
import json

import pytest

from workers.poison import REASONS, Rejected, envelope_problem


def good() -> dict:
    return {
        "body": base64.b64encode(json.dumps([["id"], {}, {}]).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"task": "stockflow.run_job", "id": "t1"},
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": "d1",
            "delivery_info": {"exchange": "", "routing_key": "celery"},
        },
    }


def test_a_message_as_kombu_publishes_it_passes():
    assert envelope_problem(good()) is None
    unencoded = good()
    unencoded["properties"]["body_encoding"] = None
    unencoded["body"] = "[[], {}, {}]"
    assert envelope_problem(unencoded) is None


def _without(key):
    def change(m):
        del m["properties"][key]

    return change


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda m: m.clear() or m.update(note="hi"), "no properties"),
        (_without("delivery_tag"), "no delivery tag"),
        (lambda m: m["properties"].update(delivery_tag={"a": 1}), "no delivery tag"),
        (lambda m: m["properties"].update(delivery_tag=True), "no delivery tag"),
        (lambda m: m["properties"]["delivery_info"].pop("routing_key"), "no delivery info"),
        (_without("delivery_info"), "no delivery info"),
        (lambda m: m.update(headers=["task"]), "headers not an object"),
        (lambda m: m.update(body=12), "body not a string"),
        (lambda m: m["properties"].update(body_encoding="rot13"), "unknown body encoding"),
        (lambda m: m.update(body="abcde"), "body not base64"),
    ],
)
def test_what_kombu_could_not_build_a_message_from(change, problem):
    message = good()
    change(message)
    assert envelope_problem(message) == problem


@pytest.mark.parametrize("payload", [None, 3, "x", [1, 2], True])
def test_json_that_is_not_an_object(payload):
    assert envelope_problem(payload) == "not an object"


def test_rejected_is_a_value_error_carrying_the_payload():
    exc = Rejected(b"garbage", "undecodable", problem="p", queue="celery")
    assert isinstance(exc, ValueError)  # callers that catch kombu's decode errors still do
    assert (exc.raw, exc.reason, exc.problem, exc.queue) == (
        b"garbage",
        "undecodable",
        "p",
        "celery",
    )
    assert set(REASONS) == {"undecodable", "malformed", "unknown_task", "invalid_task"}
