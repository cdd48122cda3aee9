"""/api/docs: Swagger UI served from our own static files (no CDN: it renders offline,
tests/system/test_docs_offline.py shows it in a browser), and for staff only when
API_DOCS_STAFF_ONLY is on (the production default)."""

import django.test
from django.test import override_settings

from tests.staff import make_staff


def test_docs_page_loads_swagger_from_our_static_files(db):
    page = django.test.Client().get("/api/docs")
    assert page.status_code == 200
    html = page.content.decode()
    assert "/static/ninja/swagger-ui-bundle.js" in html and "cdn" not in html.lower()


@override_settings(API_DOCS_STAFF_ONLY=True)
def test_docs_are_for_staff_when_staff_only(db):
    anonymous = django.test.Client()
    for path in ("/api/docs", "/api/openapi.json"):
        r = anonymous.get(path)
        assert r.status_code == 302 and r["Location"].startswith("/admin/login/"), (path, r)
    staff = django.test.Client()
    staff.force_login(make_staff("docs-reader", superuser=False))
    assert staff.get("/api/docs").status_code == 200
    assert staff.get("/api/openapi.json").json()["info"]["title"] == "stockflow"
