"""The comparison a user would otherwise pick: pay a sale *inside* the request.

    gunicorn bench.sync_app:application --config python:config.gunicorn

A WSGI app that is stockflow's own Django project (same settings, middleware, auth,
audit row, error contract, gunicorn config) plus one route,

    POST /sync/sales/{id}/pay   ->  stockflow.stock.services.payment.request_payment(...) then runner.run(job, HANDLERS)
                                    in the request, answering 200 with the finished job;

every other path is served by stockflow's URLconf as usual. The route is added by a
per-request URLconf (`request.urlconf`, a documented Django hook) set by a WSGIHandler
subclass, so no app code or setting changes. In this process the broker publish is
switched off (`dispatch.enqueue` -> no-op): the work is done here, no worker is involved.
"""

import os

import django
from django.core.handlers.wsgi import WSGIHandler

from stockflow.observability.bootstrap import bootstrap

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
bootstrap("web")  # as config/wsgi.py does
django.setup(set_prefix=False)

from django.http import HttpRequest  # noqa: E402
from django.urls import path  # noqa: E402
from ninja import NinjaAPI  # noqa: E402
from ninja.responses import Status  # noqa: E402

from api import presenters  # noqa: E402
from api.access import audited  # noqa: E402
from api.api import api as stockflow_api  # noqa: E402
from api.auth import BearerToken  # noqa: E402
from api.parser import StrictParser  # noqa: E402
from api.routes import ERRORS  # noqa: E402
from api.schemas import JobAccepted  # noqa: E402
from config import urls as stockflow_urls  # noqa: E402
from stockflow.accounts import scopes  # noqa: E402
from stockflow.stock.services import payment  # noqa: E402
from stockflow.stock.services import runner as jobs  # noqa: E402
from stockflow.stock.services.handlers import HANDLERS  # noqa: E402
from workers import publish as dispatch  # noqa: E402

dispatch.enqueue = lambda job: True  # the job runs in the request; nothing to publish

sync_api = NinjaAPI(
    title="stockflow-bench-sync",
    auth=BearerToken(),
    urls_namespace="bench_sync",
    docs_url=None,
    openapi_url=None,
    parser=StrictParser(),
)
for exc_class, handler in stockflow_api._exception_handlers.items():  # the same error contract
    sync_api.add_exception_handler(exc_class, handler)


@sync_api.post("/sync/sales/{int:sale_id}/pay", response={200: JobAccepted, **ERRORS})
@audited("sale.transition", scopes.SALES_WRITE)
def pay_now(request: HttpRequest, sale_id: int):
    job, _ = payment.request_payment(sale_id, idempotency_key=None, request_id=request.request_id)
    finished = jobs.run(job.pk, HANDLERS)
    return Status(200, {"job": presenters.job(finished or job)})


urlpatterns = [path("", sync_api.urls), *stockflow_urls.urlpatterns]
handler404 = stockflow_urls.handler404
handler500 = stockflow_urls.handler500


class _Handler(WSGIHandler):
    def get_response(self, request):
        request.urlconf = __name__  # this module's urlpatterns for this request
        return super().get_response(request)


application = _Handler()
