"""gunicorn settings for bin/web (production server, also used by `make run`)."""

import os

from stockflow.observability.logging import logging_dict

# Loopback unless told otherwise: in production a buffering proxy (nginx) sits in front
# (README, "Running behind a proxy"); compose sets BIND_HOST=0.0.0.0 inside its container.
bind = f"{os.environ.get('BIND_HOST') or '127.0.0.1'}:{os.environ.get('PORT') or '8000'}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
timeout = 30
accesslog = None  # django-structlog writes one JSON line per request instead
# gunicorn's own lines (boot, worker exits) in the same JSON shape as everything else.
logconfig_dict = logging_dict()
logconfig_dict["loggers"]["gunicorn.error"] = {
    "handlers": ["console"],
    "level": "INFO",
    "propagate": False,
}


def child_exit(server, worker):
    # A dead worker's live gauges must not linger in the multiprocess files.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
