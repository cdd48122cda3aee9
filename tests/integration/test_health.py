"""Liveness and readiness as a load balancer and the on-call engineer see them."""

import time

import httpx

from harness.processes import free_port as _free_port
from tests.conftest import WebProcess


def ready(web: WebProcess, want: int, timeout: float = 20) -> dict:
    # Worker heartbeats arrive every few seconds: poll until the verdict is the wanted one.
    deadline = time.time() + timeout
    while True:
        r = httpx.get(f"{web.url}/readyz", timeout=10)
        if r.status_code == want or time.time() > deadline:
            assert r.status_code == want, r.text
            return r.json()
        time.sleep(0.5)


def test_readyz_is_200_with_every_dependency_up(tmp_path, worker):
    web = WebProcess(tmp_path, "ready")
    try:
        assert ready(web, 200) == {
            "status": "ok",
            "checks": {"database": "ok", "broker": "ok", "redis": "ok", "worker": "ok"},
        }
        assert httpx.get(f"{web.url}/healthz", timeout=5).json() == {"status": "ok"}
    finally:
        web.stop()


def test_readyz_checks_the_celery_broker_not_only_redis_url(tmp_path, worker):
    """A web whose CELERY_BROKER_URL points at a broker that is down cannot queue jobs:
    not ready, and the answer says which dependency failed (REDIS_URL is fine)."""
    web = WebProcess(tmp_path, "nobroker", CELERY_BROKER_URL=f"redis://127.0.0.1:{_free_port()}/0")
    try:
        body = ready(web, 503)
        assert body["status"] == "unavailable"
        assert body["checks"]["broker"].startswith("failed: ")
        assert body["checks"]["redis"] == "ok" and body["checks"]["database"] == "ok"
    finally:
        web.stop()
