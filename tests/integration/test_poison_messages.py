"""A worker that meets a message it cannot run (P8 #6) sets it aside and keeps running: the
message goes, as it came, to the broker's dead-letter list, celery_messages_rejected_total
counts it by reason, `message.rejected` is logged with its length and hash and nothing of its
content, and the next job is done as usual.

Two layers meet such messages: kombu's Redis channel decodes the raw payload (not UTF-8, not
JSON, not a message envelope), Celery's consumer the envelope's body and headers."""

import base64
import hashlib
import json
import uuid

import pytest
from django.conf import settings

from harness.processes import free_port
from tests.api_helpers import pay_and_wait, product, receive, sale
from tests.metrics_helpers import samples, scrape, value
from workers.celery import app
from workers.publish import RUN_JOB_TASK

JOB_QUEUE = "celery"
SECRET = "SECRETPAYLOAD7f3a"  # content that must not reach a log line


def envelope(template: bytes, *, body: str | None = None, raw_body: str | None = None, **headers):
    """A message like the broker's own, with another body or task headers."""
    message = json.loads(template)
    if body is not None:
        message["body"] = base64.b64encode(body.encode()).decode()
    if raw_body is not None:
        message["body"] = raw_body
    message["headers"].update(headers)
    return json.dumps(message).encode()


# case: (the raw payload from a template message, the reason it is rejected for)
CASES = {
    "not json": (lambda t: f"garbage {SECRET}".encode(), "undecodable"),
    "not utf-8": (lambda t: b"\xff\xfe" + SECRET.encode(), "undecodable"),
    "json, not an envelope": (lambda t: json.dumps({"note": SECRET}).encode(), "malformed"),
    "body not base64": (lambda t: envelope(t, raw_body=SECRET), "malformed"),
    "body not json": (lambda t: envelope(t, body=f"not json {SECRET}"), "undecodable"),
    "body not a task's": (lambda t: envelope(t, body=json.dumps({SECRET: 1})), "malformed"),
    "unknown task": (lambda t: envelope(t, task=f"no.such.task.{SECRET}"), "unknown_task"),
}


def template_message(broker) -> bytes:
    """A real run_job message as the broker holds it (no worker is consuming yet)."""
    broker.delete(JOB_QUEUE)
    app.send_task(RUN_JOB_TASK, args=[str(uuid.uuid4())])
    raw = broker.rpop(JOB_QUEUE)
    assert raw and broker.llen(JOB_QUEUE) == 0
    return raw


@pytest.mark.parametrize("case", list(CASES))
def test_a_poison_message_is_set_aside_and_the_worker_keeps_running(
    case, client, broker, worker_factory
):
    make, reason = CASES[case]
    raw = make(template_message(broker))
    dead_letter = settings.BROKER_DEAD_LETTER_KEY
    broker.delete(dead_letter)
    worker = worker_factory(concurrency=1, WORKER_METRICS_PORT=free_port())

    broker.lpush(JOB_QUEUE, raw)
    sku = f"POISON-{abs(hash(case)) % 10_000}"
    product(client, sku)
    receive(client, sku, "L1", 5, 30)
    done = pay_and_wait(client, sale(client, f"S-{sku}", [(sku, 1)])["id"])

    assert done["status"] == "succeeded", done
    assert worker.proc.alive(), worker.proc.tail()
    parsed = samples(scrape(worker.proc.metrics_url))
    assert value(parsed, "celery_messages_rejected_total", reason=reason) == 1, {
        k: v for k, v in parsed.items() if k[0] == "celery_messages_rejected_total"
    }
    kept = broker.lrange(dead_letter, 0, -1)
    assert len(kept) == 1
    if raw.startswith(b"{"):  # an envelope kombu parsed: set aside as the same JSON
        assert json.loads(kept[0]) == json.loads(raw)
    else:
        assert kept[0] == raw
    log = worker.log()
    rejected = [line for line in log.splitlines() if '"message.rejected"' in line]
    assert len(rejected) == 1, log[-3000:]
    line = json.loads(rejected[0])
    assert line["reason"] == reason
    assert line["sha256"] == hashlib.sha256(kept[0]).hexdigest()
    assert SECRET not in log, "the payload reached the log"
