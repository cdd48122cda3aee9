"""The floor: a bare Celery app with stockflow's delivery settings and no stockflow code.

    celery -A bench.floor_app worker --pool prefork --concurrency 2 --without-mingle --without-gossip

What a no-op task costs the queue itself (publisher, broker, prefork worker) with the
settings stockflow ships: every CELERY_* value of config/settings.py (broker URL and
transport options, serializer, acks_late, reject_on_worker_lost, prefetch multiplier,
ignore_result, time limits, task-sent events, worker task events, track_started, publish
retry) read from the settings module as plain data. Importing config.settings starts
nothing and runs no Django setup; `fixups=()` keeps Celery's Django fixup out (it would
call django.setup() in the worker and load stockflow's apps). None of workers/ is
imported: no signal handlers, no boot steps (heartbeat, structlog), no kombu fixes, no
metrics. The bench starts it with bin/worker's pool flags (bench/stack.py start_floor).
"""

from celery import Celery

from config import settings

NOOP_TASK = "floor.noop"

# Django-only or beat-only keys: they configure what the floor leaves out on purpose.
_NOT_DELIVERY = {"CELERY_DB_REUSE_MAX", "CELERY_BEAT_SCHEDULE"}


def delivery_settings() -> dict:
    """stockflow's Celery settings, as Celery's lowercase keys (namespace CELERY_ dropped)."""
    return {
        name.removeprefix("CELERY_").lower(): getattr(settings, name)
        for name in dir(settings)
        if name.startswith("CELERY_") and name not in _NOT_DELIVERY
    }


app = Celery("floor", fixups=(), set_as_current=False)
app.conf.update(delivery_settings())
if settings.CELERY_BROKER_URL.split("://", 1)[0] in {"amqp", "amqps", "pyamqp"}:
    # On RabbitMQ the queue itself is a setting: stockflow's are quorum queues with a
    # delivery limit and publisher confirms (workers/rabbitmq.py). The floor uses the same,
    # or it would measure another queue. Only then is that module imported.
    from workers import rabbitmq

    rabbitmq.configure(app)


@app.task(name=NOOP_TASK)
def noop():
    return None
