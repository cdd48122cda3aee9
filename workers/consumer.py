"""The worker's consumer (settings.CELERY_WORKER_CONSUMER): Celery's, with every message it
cannot run set aside by workers.poison (counted, dead-lettered, logged without its body)
instead of logged with its body, and with errors Celery lets out of its task handler (a JSON
body that is not (args, kwargs, embed)) kept from stopping the worker."""

import json
import logging

from celery.worker.consumer.consumer import Consumer as CeleryConsumer
from vine import promise

from workers import poison

# For kombu's reject_log_error, which logs through the standard library.
_stdlib_logger = logging.getLogger(__name__)


class Consumer(CeleryConsumer):
    def on_decode_error(self, message, exc):
        self._reject(message, poison.UNDECODABLE, exc)

    def on_unknown_message(self, body, message):
        self._reject(message, poison.MALFORMED, None)

    def on_unknown_task(self, body, message, exc):
        self._reject(message, poison.UNKNOWN_TASK, exc)

    def on_invalid_task(self, body, message, exc):
        self._reject(message, poison.INVALID_TASK, exc)

    def create_task_handler(self, promise=promise):
        handle = super().create_task_handler(promise)
        recoverable = tuple(self.connection_errors) + tuple(self.channel_errors)

        def on_task_received(message):
            try:
                return handle(message)
            except recoverable:
                raise  # Celery reconnects
            except Exception as exc:
                # Raised in the event loop, it would stop the worker for one bad message.
                self._reject(message, poison.MALFORMED, exc)

        return on_task_received

    def _reject(self, message, reason, exc):
        raw = getattr(message, "_raw", None)  # the envelope as the broker held it
        poison.reject(
            message.channel,
            json.dumps(raw) if raw is not None else message.body,
            reason,
            queue=(message.delivery_info or {}).get("routing_key"),
            error=exc,
        )
        if not message.acknowledged:
            message.reject_log_error(_stdlib_logger, self.connection_errors, requeue=False)
