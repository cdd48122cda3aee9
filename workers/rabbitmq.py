"""RabbitMQ as the broker (CELERY_BROKER_URL=amqp://…). Redis stays the default and the
embedded choice; nothing here runs for it.

On RabbitMQ every stockflow queue (jobs, periodic work) is a **quorum queue**: replicated
(Raft) and durable, with a delivery limit — a message delivered BROKER_DELIVERY_LIMIT
times without an ack (a job that kills its worker every time) is dead-lettered to the
`stockflow.dead-letter` queue instead of looping forever — and at-least-once
dead-lettering. Publishes wait for the broker's confirm. The queues' exchanges are topic
exchanges, which Celery's native delayed delivery (retries with a countdown on quorum
queues) needs. A message the worker cannot decode is rejected without requeue
(workers/consumer.py), so the broker dead-letters it too.
"""

from celery.app.amqp import Queues
from django.conf import settings
from kombu import Exchange, Queue

DEAD_LETTER = "stockflow.dead-letter"  # the exchange (fanout) and its one queue


def is_amqp(url: str | None) -> bool:
    return (url or "").split("://", 1)[0] in {"amqp", "amqps", "pyamqp"}


def queue_arguments() -> dict:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": settings.BROKER_DELIVERY_LIMIT,
        "x-dead-letter-exchange": DEAD_LETTER,
        # At-least-once dead-lettering needs the queue to refuse publishes when full.
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def queue(name: str, dead_letter: bool = True) -> Queue:
    """A stockflow queue on RabbitMQ: quorum, its topic exchange, routed by its name.
    dead_letter=False for the periodic queue: Celery sends a periodic run's `expires` as the
    message's TTL, and an expired run is not worth keeping (the next one is on its way);
    dead-lettered, one per interval would pile up whenever the workers are down or behind."""
    arguments = queue_arguments()
    if not dead_letter:
        for key in ("x-dead-letter-exchange", "x-dead-letter-strategy", "x-overflow"):
            del arguments[key]
    return Queue(
        name,
        Exchange(name, type="topic", durable=True),
        routing_key=name,
        durable=True,
        queue_arguments=arguments,
    )


class QuorumQueues(Queues):
    """Queues Celery creates on demand (a shard queue named by -Q or by a publish, see
    workers/routing.py) are declared like the configured ones; Celery's own
    task_create_missing_queue_type would give them no delivery limit or dead-lettering."""

    def new_missing(self, name):
        return queue(name)


def configure(app) -> None:
    """Quorum task queues and publisher confirms when the broker is RabbitMQ."""
    conf = app.conf
    if not is_amqp(conf.broker_url):
        return
    conf.task_queues = [
        queue(conf.task_default_queue),
        queue(settings.PERIODIC_TASK_QUEUE, dead_letter=False),
    ]
    app.amqp.queues_cls = QuorumQueues
    conf.broker_transport_options = {
        **(conf.broker_transport_options or {}),
        "confirm_publish": True,
    }


def declare_dead_letter(connection) -> None:
    """The dead-letter exchange and its queue (a quorum queue nobody consumes: operators
    inspect it in the management UI or with rabbitmqadmin)."""
    channel = connection.default_channel
    exchange = Exchange(DEAD_LETTER, type="fanout", durable=True)
    Queue(
        DEAD_LETTER,
        exchange,
        durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )(channel).declare()
