"""The suite's view of harness.client: each helper asserts the status a test expects and
returns the body. They take any httpx.Client on the API (the `client` fixture, or one on a
WSGI transport)."""

import time

import httpx

from harness import client as api
from harness.client import TERMINAL, days, line


def ok(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    return response.json()


def product(client, sku: str, name: str = "Product") -> dict:
    return ok(api.product(client, sku, name), 201)


def receive(
    client, sku: str, lot: str, quantity: int, expires_in_days: int | None, location="MAIN"
) -> dict:
    expires_on = days(expires_in_days) if expires_in_days is not None else None
    return ok(api.receipt(client, sku, lot, quantity, expires_on, location), 201)


def sale(client, number: str, lines: list[tuple[str, int]], location="MAIN") -> dict:
    return ok(api.sale(client, number, [line(sku, q) for sku, q in lines], location), 201)


def pay(client, sale_id: int, **headers) -> dict:
    return ok(api.pay(client, sale_id, **headers), 202)["job"]


def refund(client, sale_id: int, key: str, kind="full", lines=None) -> httpx.Response:
    return api.refund(client, sale_id, key, kind, lines)


def wait_for_job(client, job_id: str, timeout: float = 30) -> dict:
    job = api.wait_for_job(client, job_id, timeout)
    assert job["status"] in TERMINAL, f"job {job_id} not finished after {timeout}s: {job}"
    return job


def pay_and_wait(client, sale_id: int) -> dict:
    return wait_for_job(client, pay(client, sale_id)["id"])


def on_hand(client, sku: str) -> dict[str, int]:
    """{lot: on-hand} for one sku."""
    rows = ok(api.stock(client, sku=sku, page_size=500), 200)["results"]
    return {row["lot"]: row["on_hand"] for row in rows}


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll `predicate` until it returns something truthy (returned), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
