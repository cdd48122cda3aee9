"""Liveness and readiness: no auth, no database writes, fast."""

from django.conf import settings
from django.db import connection
from django.http import JsonResponse

from stockflow.platform import redis_client
from workers import heartbeat


def healthz(request):
    return JsonResponse({"status": "ok"})


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_broker() -> None:
    # The broker jobs are published to (CELERY_BROKER_URL), which need not be REDIS_URL.
    from workers.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=0, timeout=2)
        conn.default_channel  # noqa: B018  (opens the transport: the broker answers, or this raises)


def _check_redis() -> None:
    redis_client.client().ping()  # throttle, heartbeats, ledger verdict


def _check_worker() -> None:
    if heartbeat.live_workers(settings.WORKER_HEARTBEAT_MAX_AGE_SECONDS) < 1:
        raise RuntimeError(
            f"no worker heartbeat in the last {settings.WORKER_HEARTBEAT_MAX_AGE_SECONDS}s"
        )


CHECKS = {
    "database": _check_database,
    "broker": _check_broker,
    "redis": _check_redis,
    "worker": _check_worker,
}


def readyz(request):
    results, ok = {}, True
    for name, check in CHECKS.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # any failure of a dependency is "not ready", never a 500
            ok = False
            results[name] = f"failed: {type(exc).__name__}"
    return JsonResponse(
        {"status": "ok" if ok else "unavailable", "checks": results}, status=200 if ok else 503
    )
