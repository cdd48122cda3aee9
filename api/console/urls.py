from django.urls import path

from . import views

app_name = "console"
urlpatterns = [
    path("", views.overview, name="overview"),
    path("ledger/recompute/", views.recompute_ledger, name="recompute-ledger"),
    path("jobs/", views.jobs, name="jobs"),
    path("jobs/<uuid:job_id>/", views.job_detail, name="job"),
    path(
        "jobs/<uuid:job_id>/retry/",
        views.job_action,
        {"action": "retry"},
        name="job-retry",
    ),
    path(
        "jobs/<uuid:job_id>/resend/",
        views.job_action,
        {"action": "resend"},
        name="job-resend",
    ),
    path("runbooks/", views.runbooks, name="runbooks"),
    path("runbooks/<str:name>", views.runbooks, name="runbook"),
]
