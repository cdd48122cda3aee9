import os

from django.core.wsgi import get_wsgi_application

from api.observability import sentry

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "api.settings")
sentry.init()  # before Django builds its handler, so the integration sees the middleware chain
application = get_wsgi_application()
