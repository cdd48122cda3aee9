"""Small HTTP helpers that drive stockflow the way a caller does."""

import datetime

import httpx

from tests.conftest import wait_for_job

TODAY = datetime.date.today()


def days(n: int) -> str:
    return (TODAY + datetime.timedelta(days=n)).isoformat()


def ok(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    return response.json()


def product(client, sku: str, name: str = "Product") -> dict:
    return ok(client.post("/api/products", json={"sku": sku, "name": name}), 201)


def receive(
    client, sku: str, lot: str, quantity: int, expires_in_days: int | None, location="MAIN"
) -> dict:
    body = {
        "sku": sku,
        "location": location,
        "lot": lot,
        "quantity": quantity,
        "expires_on": days(expires_in_days) if expires_in_days is not None else None,
    }
    return ok(client.post("/api/receipts", json=body), 201)


def sale(client, number: str, lines: list[tuple[str, int]], location="MAIN") -> dict:
    body = {
        "number": number,
        "location": location,
        "lines": [{"sku": sku, "quantity": q, "unit_price": "9.99"} for sku, q in lines],
    }
    return ok(client.post("/api/sales", json=body), 201)


def pay(client, sale_id: int, **headers) -> dict:
    return ok(
        client.post(
            f"/api/sales/{sale_id}/transition", json={"to_status": "paid"}, headers=headers
        ),
        202,
    )["job"]


def refund(client, sale_id: int, key: str, kind="full", lines=None) -> httpx.Response:
    body = {"kind": kind} if lines is None else {"kind": kind, "lines": lines}
    return client.post(f"/api/sales/{sale_id}/refunds", json=body, headers={"Idempotency-Key": key})


def pay_and_wait(client, sale_id: int) -> dict:
    return wait_for_job(client, pay(client, sale_id)["id"])


def on_hand(client, sku: str) -> dict[str, int]:
    """{lot: on-hand} for one sku."""
    return {
        row["lot"]: row["on_hand"] for row in ok(client.get("/api/stock", params={"sku": sku}), 200)
    }
