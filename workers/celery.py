"""The Celery app: every setting is a CELERY_* Django setting (config/settings.py).

Imports run one way: this module builds the app, adds the boot steps and connects the
signal handlers (workers.signals); nothing imports this module back but the entry points
(`celery -A workers.celery`), the publisher and the tasks' registration.
"""

import os

from celery import Celery
from django_structlog.celery.steps import DjangoStructLogInitStep

from workers import kombu_fixes, rabbitmq, signals  # noqa: F401  (importing connects the handlers)
from workers.heartbeat import Heartbeat

kombu_fixes.install()

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("stockflow")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.include = ["tasks.jobs"]
rabbitmq.configure(app)  # quorum queues and confirms when CELERY_BROKER_URL is amqp://
app.steps["worker"].add(DjangoStructLogInitStep)
app.steps["worker"].add(Heartbeat)
