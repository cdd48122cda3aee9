"""Periodic work under a backlog (P8 #4): the reconciler and the ledger check have their own
queue, consumed by every worker, so a backlog of job messages neither delays them past
their expiry nor keeps a job whose message was lost waiting for the whole backlog."""

import base64
import json
import re
import time
import uuid

from django.conf import settings

from harness.processes import BIN
from stockflow.stock.models import Job
from tests.api_helpers import pay, product, receive, sale, wait_for_job
from tests.conftest import stack
from workers.celery import app

JOB_QUEUE = "celery"
# Far more than the worker drains in the test's patience (hundreds a second): without the
# periodic queue the reconciler's messages would sit behind all of it.
BACKLOG = 20_000
BACKLOG_MARK = "backlog-"  # in each backlog message's task id

# Every message of the job queue whose raw payload does not hold ARGV[1], in order.
_DROP_MARKED = """
local items = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
for _, item in ipairs(items) do
  if not string.find(item, ARGV[1], 1, true) then redis.call('RPUSH', KEYS[1], item) end
end
return #items
"""


def backlog_messages(template: bytes, n: int) -> list[str]:
    """n run_job messages like `template`, each for a job id nobody has (one statement each
    for the worker), with their own task id and delivery tag."""
    envelope = json.loads(template)
    _, kwargs, embed = json.loads(base64.b64decode(envelope["body"]))
    out = []
    for _ in range(n):
        job_id, task_id = str(uuid.uuid4()), f"{BACKLOG_MARK}{uuid.uuid4()}"
        body = json.dumps([[job_id], kwargs, embed]).encode()
        envelope["body"] = base64.b64encode(body).decode()
        envelope["headers"].update(id=task_id, root_id=task_id, argsrepr=repr([job_id]))
        envelope["properties"].update(correlation_id=task_id, delivery_tag=str(uuid.uuid4()))
        out.append(json.dumps(envelope))
    return out


def wait_until(predicate, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    return None


def test_periodic_tasks_have_their_own_queue_consumed_by_every_worker():
    default = re.search(r'--queues "\$\{WORKER_QUEUES:-([^}]*)\}"', (BIN / "worker").read_text())
    assert default, "bin/worker names its queues"
    assert set(default.group(1).split(",")) == {
        settings.CELERY_TASK_DEFAULT_QUEUE,
        settings.PERIODIC_TASK_QUEUE,
    }
    for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
        route = app.amqp.router.route({}, entry["task"])
        assert route["queue"].name == settings.PERIODIC_TASK_QUEUE, name
        # Expires after about one interval: late enough to wait out a busy worker, and the
        # next run is sent by then.
        assert 0.5 * entry["schedule"] <= entry["options"]["expires"] <= entry["schedule"], name
    assert app.amqp.router.route({}, "stockflow.run_job")["queue"].name == JOB_QUEUE


def test_the_reconciler_runs_beside_a_job_backlog(client, broker, worker_factory, tmp_path):
    """A job whose message was lost, behind a backlog of job messages longer than the
    reconcile interval: beat's reconciler still runs while the backlog waits, re-sends the
    job, and the job finishes once it is delivered."""
    broker.delete(JOB_QUEUE)
    product(client, "PERIODIC")
    receive(client, "PERIODIC", "L1", 5, 30)
    s = sale(client, "S-PERIODIC", [("PERIODIC", 2)])
    job = pay(client, s["id"])  # no worker yet: its message waits in the broker ...
    template = broker.rpop(JOB_QUEUE)  # ... and the broker loses it
    assert template and broker.llen(JOB_QUEUE) == 0
    lease = Job.objects.get(pk=job["id"]).lease_expires_at

    messages = backlog_messages(template, BACKLOG)
    with broker.pipeline(transaction=False) as pipe:
        for start in range(0, BACKLOG, 1000):
            pipe.lpush(JOB_QUEUE, *messages[start : start + 1000])
        pipe.execute()
    del messages

    beat = stack(tmp_path).start_beat(env={"JOB_RECONCILE_INTERVAL_SECONDS": "1"})
    try:
        worker = worker_factory(concurrency=1)
        # The queued lease (5 s in tests) runs out; the next reconcile re-sends the job,
        # which moves its lease on.
        resent = wait_until(
            lambda: Job.objects.get(pk=job["id"]).lease_expires_at > lease, timeout=25
        )
        left = broker.llen(JOB_QUEUE)
        assert resent, (
            f"the reconciler did not run under the backlog ({left} of {BACKLOG} job messages "
            f"left):\n{worker.proc.tail()}"
        )
        assert left > BACKLOG // 10, f"the backlog was (nearly) drained first: {left} left"
        # (the task logs after its transaction committed)
        assert wait_until(lambda: '"jobs.reconciled"' in worker.log(), timeout=5), worker.log()[
            -2000:
        ]

        # The backlog is not the point any more: drop it, keep the re-sent message.
        broker.eval(_DROP_MARKED, 1, JOB_QUEUE, BACKLOG_MARK)
        done = wait_for_job(client, job["id"], timeout=30)
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 1
        assert worker.proc.alive()
    finally:
        beat.stop(timeout=10)
        broker.delete(JOB_QUEUE)
