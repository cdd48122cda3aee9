from django.contrib import admin
from django.urls import include, path

from api.core.errors import ErrorCode
from api.http import health
from api.http.api import api
from api.http.errors import error_response
from api.observability import exposition

urlpatterns = [
    path("healthz", health.healthz),
    path("readyz", health.readyz),
    path("metrics", exposition.metrics_view),
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
