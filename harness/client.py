"""One HTTP client for stockflow's API, as a caller drives it: bearer token, X-Request-ID,
the requests of a sale's life (product, receipt, sale, pay, refund, job) and waiting for a
job; optionally a caller's retry policy (resend on 503 and on no answer).

`Client` is an httpx.Client (get/post/... work as usual). The request helpers take any
httpx.Client on the API (a Client, or one on a WSGI transport) and return the response,
leaving the status to the caller. `async_client` is the same client for asyncio (the load
generator).
"""

from __future__ import annotations

import datetime
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

TERMINAL = ("succeeded", "failed")

# Request ids unique across every client of the process (threads share the counter).
_request_numbers = itertools.count(1)


def days(n: int) -> str:
    """The ISO date n days from today (expiry dates relative to the run)."""
    return (datetime.date.today() + datetime.timedelta(days=n)).isoformat()


def line(sku: str, quantity: int, unit_price: str = "9.99") -> dict:
    return {"sku": sku, "quantity": quantity, "unit_price": unit_price}


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@dataclass(frozen=True)
class Retry:
    """What a well-behaved caller does when a request meets a restart window: 503 (database
    down) or no answer at all (connection refused/reset, timeout) is resent with the same
    body and headers (so the same Idempotency-Key) with jittered exponential backoff, until
    give_up_s. Any other answer, a 500 included, is final."""

    give_up_s: float = 180.0
    first_delay_s: float = 0.2
    max_delay_s: float = 2.0


class Client(httpx.Client):
    """httpx.Client on a stockflow base URL with its bearer token. request_id_prefix:
    requests without an X-Request-ID get `<prefix>-<n>`. retry: the policy call() follows."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float | httpx.Timeout = 30.0,
        request_id_prefix: str | None = None,
        retry: Retry | None = None,
        **kwargs,
    ):
        if request_id_prefix:
            hooks = kwargs.setdefault("event_hooks", {})
            hooks.setdefault("request", []).append(self._stamp)
        super().__init__(base_url=url, headers=auth_headers(token), timeout=timeout, **kwargs)
        self.request_id_prefix, self.retry = request_id_prefix, retry

    def _stamp(self, request: httpx.Request) -> None:
        if "X-Request-ID" not in request.headers:
            request.headers["X-Request-ID"] = f"{self.request_id_prefix}-{next(_request_numbers)}"

    # --- sending, with the retry policy ---------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        *,
        on_attempt: Callable[[int | str, bool], None] | None = None,
        **kwargs,
    ) -> tuple[httpx.Response | None, int]:
        """Send until a final answer (anything but 503 / no answer) or until the retry
        policy gives up (one attempt without a policy). Returns (response, attempts); the
        response is None if nothing answered. on_attempt(status, will_retry) sees each
        attempt; status is the HTTP status or "no_answer:<exception class>"."""
        deadline = time.monotonic() + (self.retry.give_up_s if self.retry else 0)
        delay = self.retry.first_delay_s if self.retry else 0
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = self.request(method, path, **kwargs)
                status: int | str = resp.status_code
            except httpx.TransportError as exc:
                resp, status = None, f"no_answer:{type(exc).__name__}"
            again = (
                (resp is None or resp.status_code == 503)
                and self.retry is not None
                and time.monotonic() <= deadline
            )
            if on_attempt:
                on_attempt(status, again)
            if not again:
                return resp, attempt
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 1.6, self.retry.max_delay_s)


# --- the API: requests on any httpx.Client with stockflow's base URL and a token -------------


def product(http: httpx.Client, sku: str, name: str = "Product") -> httpx.Response:
    return http.post("/api/products", json={"sku": sku, "name": name})


def receipt(
    http: httpx.Client,
    sku: str,
    lot: str,
    quantity: int,
    expires_on: str | None,
    location: str = "MAIN",
) -> httpx.Response:
    body = {
        "sku": sku,
        "location": location,
        "lot": lot,
        "quantity": quantity,
        "expires_on": expires_on,
    }
    return http.post("/api/receipts", json=body)


def stock(http: httpx.Client, **params) -> httpx.Response:
    """GET /api/stock?sku=&location="""
    return http.get("/api/stock", params=params)


def sale(
    http: httpx.Client, number: str, lines: list[dict], location: str = "MAIN"
) -> httpx.Response:
    return http.post("/api/sales", json={"number": number, "location": location, "lines": lines})


def get_sale(http: httpx.Client, sale_id: int) -> httpx.Response:
    return http.get(f"/api/sales/{sale_id}")


def pay(http: httpx.Client, sale_id: int, key: str | None = None, **headers) -> httpx.Response:
    """The PAID transition (202 + job); key: its Idempotency-Key."""
    if key:
        headers["Idempotency-Key"] = key
    return http.post(
        f"/api/sales/{sale_id}/transition", json={"to_status": "paid"}, headers=headers
    )


def refund(
    http: httpx.Client, sale_id: int, key: str, kind: str = "full", lines: list[dict] | None = None
) -> httpx.Response:
    body = {"kind": kind} if lines is None else {"kind": kind, "lines": lines}
    return http.post(f"/api/sales/{sale_id}/refunds", json=body, headers={"Idempotency-Key": key})


def job(http: httpx.Client, job_id: str) -> httpx.Response:
    return http.get(f"/api/jobs/{job_id}")


def wait_for_job(
    http: httpx.Client, job_id: str, timeout: float = 30, interval: float = 0.05
) -> dict:
    """GET the job until it is finished or timeout; its last state either way."""
    deadline = time.monotonic() + timeout
    while True:
        state = job(http, job_id).json()
        if state.get("status") in TERMINAL or time.monotonic() >= deadline:
            return state
        time.sleep(interval)


def async_client(
    url: str, token: str | None, *, max_connections: int = 64, timeout: float = 30.0
) -> httpx.AsyncClient:
    """The asyncio client of the load generator: the same base URL and token."""
    return httpx.AsyncClient(
        base_url=url,
        headers=auth_headers(token),
        timeout=timeout,
        # Idle connections dropped before gunicorn's 2 s keep-alive timeout does, so a
        # request never races the server closing its connection.
        limits=httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=1.0,
        ),
    )
