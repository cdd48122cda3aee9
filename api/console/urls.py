from django.urls import path

from . import views

app_name = "console"
urlpatterns = [
    path("", views.overview, name="overview"),
    path("jobs/<uuid:job_id>/", views.job_detail, name="job"),
    path("runbooks/", views.runbooks, name="runbooks"),
    path("runbooks/<str:name>", views.runbooks, name="runbook"),
]
