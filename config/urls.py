from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from api import health, metrics_view
from api.api import api
from api.errors import error_response
from stockflow.platform.errors import ErrorCode

urlpatterns = [
    path("healthz", health.healthz),
    path("readyz", health.readyz),
    path("metrics", metrics_view.metrics_view),
    # The stock models were three apps (inventory, sales, jobs) before they became one:
    # their old admin pages answer with a permanent redirect, so bookmarks keep working.
    re_path(
        r"^admin/(?:inventory|sales|jobs)/(?P<rest>.*)$",
        RedirectView.as_view(url="/admin/stock/%(rest)s", permanent=True, query_string=True),
    ),
    path("admin/", admin.site.urls),
    path("console/", include("api.console.urls")),
    path("", api.urls),  # /api/... and /public/...
]


def handler404(request, exception=None):
    return error_response(request, ErrorCode.NOT_FOUND, "no such endpoint")


def handler500(request):
    return error_response(
        request, ErrorCode.ERROR, "internal error; quote the request id when reporting it"
    )
