"""The Celery app: every setting is a CELERY_* Django setting (api/settings.py)."""

import os

from celery import Celery

from workers import kombu_fixes

kombu_fixes.install()

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "api.settings")

app = Celery("stockflow")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.include = ["tasks.jobs"]

import workers.signals  # noqa: E402,F401  (worker-side signal handlers and boot steps)
