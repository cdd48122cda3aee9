"""The web's WSGI entry point (gunicorn: bin/web)."""

import os

from django.core.wsgi import get_wsgi_application

from stockflow.observability.bootstrap import bootstrap

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
bootstrap("web")  # before Django builds its handler, so Sentry's integration sees the middleware
application = get_wsgi_application()
