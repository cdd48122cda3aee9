"""A verified API token is cached per process for API_TOKEN_CACHE_SECONDS: a revocation
made elsewhere (another process, the admin) takes at most that long to bite here."""

import time

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from stockflow.accounts.models import ApiToken, AuditEntry, forget_cached_tokens
from stockflow.stock.models import Job
from stockflow.stock.services import inventory, sales


@pytest.fixture(autouse=True)
def _fresh_cache():
    forget_cached_tokens()
    yield
    forget_cached_tokens()


def _get(raw):
    return Client(HTTP_AUTHORIZATION=f"Bearer {raw}").get("/api/stock")


def test_a_token_revoked_elsewhere_stops_working_within_the_cache_time(db, settings):
    settings.API_TOKEN_CACHE_SECONDS = 1
    token, raw = ApiToken.issue("cached")
    assert _get(raw).status_code == 200
    # As another process would: the row changes, this process's cache does not know.
    ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    assert _get(raw).status_code == 200  # still inside the cache window
    time.sleep(1.1)
    assert _get(raw).status_code == 401


def test_revoking_through_the_model_stops_the_token_in_this_process_at_once(db, settings):
    settings.API_TOKEN_CACHE_SECONDS = 60
    token, raw = ApiToken.issue("cached")
    assert _get(raw).status_code == 200
    assert ApiToken.objects.filter(pk=token.pk).revoke() == 1
    assert _get(raw).status_code == 401


def test_a_cached_token_skips_the_lookup_and_last_use_is_kept_to_the_minute(db, settings):
    settings.API_TOKEN_CACHE_SECONDS = 60
    token, raw = ApiToken.issue("cached")
    assert _get(raw).status_code == 200
    first_use = ApiToken.objects.get(pk=token.pk).last_used_at
    assert first_use is not None
    with CaptureQueriesContext(connection) as queries:
        assert _get(raw).status_code == 200
    assert not [q for q in queries.captured_queries if "token_hash" in q["sql"]]
    assert not [q for q in queries.captured_queries if "last_used_at" in q["sql"]]
    assert ApiToken.objects.get(pk=token.pk).last_used_at == first_use


def test_zero_disables_the_cache(db, settings):
    settings.API_TOKEN_CACHE_SECONDS = 0
    token, raw = ApiToken.issue("uncached")
    assert _get(raw).status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    assert _get(raw).status_code == 401


def test_a_paid_accept_with_a_cached_token_is_one_statement(db, settings):
    # Token from the cache, job and audit row in one statement (outbox.create_at_once).
    settings.API_TOKEN_CACHE_SECONDS = 60
    inventory.create_product("ONE", "One")
    inventory.receive_stock("ONE", "MAIN", "L1", None, 5)
    sale = sales.create_sale("S-ONE", "MAIN", [{"sku": "ONE", "quantity": 1, "unit_price": "1"}])
    _, raw = ApiToken.issue("one-statement")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/api/stock").status_code == 200  # verifies and caches the token
    with CaptureQueriesContext(connection) as queries:
        r = client.post(
            f"/api/sales/{sale.pk}/transition",
            {"to_status": "paid"},
            content_type="application/json",
        )
    assert r.status_code == 202, r.content
    assert len(queries.captured_queries) == 1, [q["sql"] for q in queries.captured_queries]
    job = Job.objects.get(pk=r.json()["job"]["id"])
    assert (job.sale_id, job.status, job.kind) == (sale.pk, "queued", "sale.paid")
    audit = AuditEntry.objects.get(sale_id=sale.pk)
    assert (audit.outcome, audit.status_code, audit.job_id) == ("accepted", 202, job.pk)
