"""The client side of the chaos run: what a well-behaved caller sends, how it retries,
and everything it was told (to be checked against the database afterwards).

A request that meets a restart window may get 503 (database down) or no answer at all
(connection refused/reset, timeout): it is retried with the same body and the same
Idempotency-Key, which is what a real client does. A 500 is never retried and is a
violation by itself.
"""

from __future__ import annotations

import heapq
import itertools
import json
import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import httpx

from harness.client import Client, Retry, days

TERMINAL = ("succeeded", "failed")
MALFORMED_EXPECTED = (400, 404, 422)


class Recorder:
    """Thread-safe tallies of requests, answers, accepted jobs and violations."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: Counter = Counter()  # (kind, final status) per logical request
        self.attempts: Counter = Counter()  # (kind, status) per HTTP attempt
        self.retries: Counter = Counter()  # reason
        self.server_errors: list[dict] = []
        self.violations: list[dict] = []
        self.violation_counts: Counter = Counter()
        self.findings: list[dict] = []
        self.finding_counts: Counter = Counter()
        self.accepted: dict[tuple, str] = {}  # (kind, sale id, idempotency key) -> job id
        self.job_kind: dict[str, str] = {}  # job id -> "pay" | "refund"
        self.duplicates: Counter = Counter()
        self.notes: Counter = Counter()
        self.done_flows = 0

    def violation(self, check: str, **detail) -> None:
        with self.lock:
            self.violation_counts[check] += 1
            if self.violation_counts[check] <= 10:  # examples, not a flood
                self.violations.append({"check": check, **detail})

    def finding(self, check: str, **detail) -> None:
        """Worth reporting but not an invariant (e.g. a process that died and was
        restarted by the harness, as a supervisor would): a violation only with --strict."""
        with self.lock:
            self.finding_counts[check] += 1
            if self.finding_counts[check] <= 10:
                self.findings.append({"check": check, **detail})

    def note(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.notes[name] += n

    def accept(self, kind: str, sale_id: int, key: str, job_id: str) -> None:
        with self.lock:
            known = self.accepted.get((kind, sale_id, key))
            if known is None:
                self.accepted[(kind, sale_id, key)] = job_id
                self.job_kind[job_id] = kind
        if known is not None and known != job_id:
            self.violation(
                "same_key_same_job", kind=kind, sale_id=sale_id, key=key, first=known, again=job_id
            )


class Api:
    """harness.client.Client with the caller's retry policy, one per thread (keep-alive, no
    sharing); every attempt, retry and final answer is tallied in the Recorder."""

    def __init__(self, base_url: str, token: str, rec: Recorder, *, give_up_s: float = 180):
        self.base_url, self.token, self.rec = base_url, token, rec
        self.retry = Retry(give_up_s=give_up_s)
        self.local = threading.local()
        self.ids = itertools.count(1)
        self.clients: list[Client] = []
        self.lock = threading.Lock()

    def client(self) -> Client:
        c = getattr(self.local, "client", None)
        if c is None:
            c = Client(
                self.base_url, self.token, timeout=httpx.Timeout(45, connect=5), retry=self.retry
            )
            self.local.client = c
            with self.lock:
                self.clients.append(c)
        return c

    def close(self) -> None:
        for c in self.clients:
            c.close()

    def call(
        self,
        kind: str,
        method: str,
        path: str,
        *,
        json_body=None,
        content: bytes | None = None,
        headers: dict | None = None,
    ) -> tuple[httpx.Response | None, int]:
        """Send until a final answer (anything but 503 / no answer) or give-up.
        Returns (response or None, attempts)."""
        headers = dict(headers or {})
        headers.setdefault("X-Request-ID", f"chaos-{kind}-{next(self.ids)}")
        if content is not None:
            headers.setdefault("Content-Type", "application/json")
        last: list = []

        def tally(status, will_retry: bool) -> None:
            last[:] = [status]
            with self.rec.lock:
                self.rec.attempts[(kind, status)] += 1
                if will_retry:
                    self.rec.retries[str(status)] += 1

        resp, attempt = self.client().call(
            method, path, json=json_body, content=content, headers=headers, on_attempt=tally
        )
        if resp is not None and resp.status_code >= 500 and resp.status_code != 503:
            with self.rec.lock:
                self.rec.server_errors.append(
                    {
                        "kind": kind,
                        "method": method,
                        "path": path,
                        "status": resp.status_code,
                        "request_id": resp.headers.get("X-Request-ID"),
                        "body": resp.text[:300],
                    }
                )
        with self.rec.lock:
            self.rec.requests[(kind, resp.status_code if resp is not None else "gave_up")] += 1
        if resp is None or resp.status_code == 503:
            self.rec.violation(
                "request_gave_up", kind=kind, path=path, attempts=attempt, last=last[0]
            )
        return resp, attempt


@dataclass
class SaleState:
    sale_id: int
    number: str
    lines: dict[int, int]  # sale line id -> quantity sold
    pay_job: str
    refunded: dict[int, int] = field(default_factory=dict)  # expected, from succeeded refund jobs
    refunds_sent: int = 0

    def remaining(self) -> dict[int, int]:
        return {lid: q - self.refunded.get(lid, 0) for lid, q in self.lines.items()}


class Workload:
    """Products and stock, then sale flows (create -> pay [-> duplicate]) and refund flows
    (on paid sales: full, partial, over-refund [-> duplicate, conflict]), with malformed
    requests sprinkled in. Rates are per logical request."""

    def __init__(
        self,
        api: Api,
        rec: Recorder,
        *,
        sales: int,
        refunds: int,
        seed: int,
        run_id: str,
        dup_rate=0.10,
        over_refund_rate=0.05,
        malformed_rate=0.05,
        conflict_rate=0.02,
    ):
        self.api, self.rec = api, rec
        self.n_sales, self.n_refunds = sales, refunds
        self.dup_rate, self.over_rate, self.malformed_rate, self.conflict_rate = (
            dup_rate,
            over_refund_rate,
            malformed_rate,
            conflict_rate,
        )
        self.run_id = run_id
        self.seed = seed
        self.rng_lock = threading.Lock()
        self.rng = random.Random(seed)
        self.skus: list[str] = []
        self.expired_only: list[str] = []
        self.supply: dict[str, int] = {}
        self.sales: dict[int, SaleState] = {}
        self.sales_lock = threading.Lock()
        # Refund side: a time-ordered heap of (when, seq, action, sale id, job id).
        self.heap: list = []
        self.heap_lock = threading.Lock()
        self.seq = itertools.count()
        self.refund_keys_sent = 0
        self.refund_quota_lock = threading.Lock()
        self.sale_flows_done = threading.Event()
        self.refund_candidate_p = min(1.0, 2.5 * refunds / max(sales, 1))
        self.lookup_sale_id = None  # set by the harness: number -> id from the database
        self.tl = threading.local()
        self.refund_amounts: dict[
            str, tuple[int, dict[int, int]]
        ] = {}  # job id -> (sale id, {line: qty})

    def rand(self) -> random.Random:
        """A per-thread generator seeded from the run's seed."""
        r = getattr(self.tl, "rng", None)
        if r is None:
            with self.rng_lock:
                r = self.tl.rng = random.Random(self.rng.random())
        return r

    # --- setup (before the faults start) ---------------------------------------------------

    def setup_stock(self) -> dict:
        n_skus = max(8, min(50, self.n_sales // 25))
        n_expired_only = max(1, n_skus // 20)
        avg_units_per_sale = 2 * 2.5
        per_sku = self.n_sales * avg_units_per_sale / n_skus
        receipts = 0
        for i in range(n_skus):
            sku = f"CH{self.run_id}-{i:03d}"
            self._ok(
                "product", "POST", "/api/products", {"sku": sku, "name": f"Chaos product {i}"}, 201
            )
            self.skus.append(sku)
            # An expired lot (never consumable) on every other product: when the good stock
            # runs out, those sales fail `expired_batch`, the others `insufficient_stock`.
            batches = [("EXP", -3, 5)] if i % 2 == 0 else []
            if i < n_expired_only:
                self.expired_only.append(sku)
            else:
                good = max(4, int(per_sku * 0.6))  # ~60 % of the demand: later sales run short
                batches += [
                    ("A", 20, good // 3),
                    ("B", 60, good // 3),
                    ("C", None if i % 3 == 0 else 120, good - 2 * (good // 3)),
                ]
                self.supply[sku] = good
            for lot, exp, qty in batches:
                body = {
                    "sku": sku,
                    "location": "MAIN",
                    "lot": lot,
                    "quantity": qty,
                    "expires_on": days(exp) if exp is not None else None,
                }
                self._ok("receipt", "POST", "/api/receipts", body, 201)
                receipts += 1
        return {
            "skus": n_skus,
            "expired_only_skus": n_expired_only,
            "receipts": receipts,
            "units_in_stock": sum(self.supply.values()),
            "units_demanded_approx": int(self.n_sales * avg_units_per_sale),
        }

    def _ok(self, kind, method, path, body, status) -> dict:
        resp, _ = self.api.call(kind, method, path, json_body=body)
        if resp is None or resp.status_code != status:
            raise RuntimeError(
                f"setup {method} {path}: {resp.status_code if resp else 'no answer'} "
                f"{resp.text[:300] if resp else ''}"
            )
        return resp.json()

    # --- sale flows -----------------------------------------------------------------------------

    def sale_flow(self, i: int) -> None:
        try:
            self._sale_flow(i)
        except Exception as exc:  # a harness bug must not pass as a clean run
            self.rec.violation(
                "harness_exception", where="sale_flow", error=f"{type(exc).__name__}: {exc}"
            )
        finally:
            with self.rec.lock:
                self.rec.done_flows += 1

    def _sale_flow(self, i: int) -> None:
        rng = self.rand()
        # malformed_rate is a share of all requests: a flow sends 2 + dup_rate of its own.
        if rng.random() < self.malformed_rate * (2 + self.dup_rate) / (1 - self.malformed_rate):
            self.malformed(rng)
        number = f"CH{self.run_id}-S{i:06d}"
        n_lines = rng.choice((1, 2, 2, 3))
        skus = rng.sample(self.skus, n_lines)
        body = {
            "number": number,
            "location": "MAIN",
            "lines": [
                {"sku": s, "quantity": rng.randint(1, 4), "unit_price": "9.99"} for s in skus
            ],
        }
        resp, attempts = self.api.call("sale_create", "POST", "/api/sales", json_body=body)
        if resp is None:
            return
        if resp.status_code == 201:
            sale = resp.json()
        elif resp.status_code == 409 and attempts > 1:
            # Committed by an attempt answered 503 (or not at all); POST /api/sales has no
            # idempotency key, so the retry is a 409 and only the database knows the id.
            sale_id = self.lookup_sale_id(number)
            self.rec.finding(
                "sale_create_committed_but_not_confirmed",
                number=number,
                sale_id=sale_id,
                request_id=resp.request.headers.get("X-Request-ID"),
                attempts=attempts,
                retry_answer=resp.text[:200],
            )
            if sale_id is None:
                self.rec.violation("sale_create_conflict_without_sale", number=number)
                return
            r2, _ = self.api.call("sale_get", "GET", f"/api/sales/{sale_id}")
            if r2 is None or r2.status_code != 200:
                return
            sale = r2.json()
        else:
            self.rec.violation(
                "sale_create_unexpected", status=resp.status_code, body=resp.text[:300]
            )
            return
        sale_id = sale["id"]
        with self.rec.lock:
            self.rec.notes["sales_created"] += 1
        lines = {ln["id"]: ln["quantity"] for ln in sale["lines"]}
        key = f"pay-{number}"
        pay_body = {"to_status": "paid"}
        job_id = self._submit_job("pay", sale_id, f"/api/sales/{sale_id}/transition", pay_body, key)
        if job_id is None:
            return
        if rng.random() < self.dup_rate:
            self._duplicate(
                "pay", sale_id, f"/api/sales/{sale_id}/transition", pay_body, key, job_id
            )
        state = SaleState(sale_id, number, lines, job_id)
        with self.sales_lock:
            self.sales[sale_id] = state
        if rng.random() < self.refund_candidate_p:
            self._push(0.5, "await_pay", sale_id)

    def _submit_job(
        self, kind: str, sale_id: int, path: str, body: dict, key: str, expect_status: int = 202
    ) -> str | None:
        resp, _ = self.api.call(
            kind, "POST", path, json_body=body, headers={"Idempotency-Key": key}
        )
        if resp is None:
            return None
        if resp.status_code != expect_status:
            if expect_status == 202:
                self.rec.violation(
                    f"{kind}_not_accepted",
                    sale_id=sale_id,
                    status=resp.status_code,
                    body=resp.text[:300],
                )
            return None
        job_id = resp.json()["job"]["id"]
        if resp.headers.get("Location") != f"/api/jobs/{job_id}":
            self.rec.violation(
                "location_header", kind=kind, job_id=job_id, location=resp.headers.get("Location")
            )
        self.rec.accept(kind, sale_id, key, job_id)
        return job_id

    def _duplicate(
        self, kind: str, sale_id: int, path: str, body: dict, key: str, job_id: str
    ) -> None:
        resp, _ = self.api.call(
            f"{kind}_duplicate", "POST", path, json_body=body, headers={"Idempotency-Key": key}
        )
        if resp is None:
            return
        if resp.status_code == 202 and resp.json()["job"]["id"] == job_id:
            self.rec.duplicates[f"{kind}_same_job"] += 1
        else:
            self.rec.duplicates[f"{kind}_different"] += 1
            self.rec.violation(
                "duplicate_returned_other",
                kind=kind,
                sale_id=sale_id,
                key=key,
                job_id=job_id,
                status=resp.status_code,
                body=resp.text[:300],
            )

    # --- malformed requests --------------------------------------------------------------------

    MALFORMED = (
        ("truncated_json", "POST", "transition", b'{"to_status": "pa', None),
        ("not_utf8", "POST", "transition", b'\xff\xfe{"to_status": 1}', None),
        ("json_array", "POST", "transition", b'["paid"]', None),
        ("to_status_int", "POST", "transition", None, {"to_status": 7}),
        ("to_status_unknown", "POST", "transition", None, {"to_status": "shipped"}),
        (
            "quantity_string",
            "POST",
            "sales",
            None,
            {
                "number": "X",
                "location": "MAIN",
                "lines": [{"sku": "S", "quantity": "3", "unit_price": "1.00"}],
            },
        ),
        (
            "price_float",
            "POST",
            "sales",
            None,
            {
                "number": "X",
                "location": "MAIN",
                "lines": [{"sku": "S", "quantity": 3, "unit_price": 1.5}],
            },
        ),
        ("lines_empty", "POST", "sales", None, {"number": "X", "location": "MAIN", "lines": []}),
        (
            "refund_line_types",
            "POST",
            "refunds",
            None,
            {"kind": "partial", "lines": [{"sale_line_id": "x", "quantity": -1}]},
        ),
        (
            "refund_huge_quantity",
            "POST",
            "refunds",
            None,
            {"kind": "partial", "lines": [{"sale_line_id": 1, "quantity": 10**30}]},
        ),
        ("refund_no_key", "POST", "refunds_nokey", None, {"kind": "full"}),
        ("refund_kind_unknown", "POST", "refunds", None, {"kind": "everything"}),
        (
            "receipt_bad_date",
            "POST",
            "receipts",
            None,
            {"sku": "S", "location": "MAIN", "lot": "L", "quantity": 1, "expires_on": "31/12/2030"},
        ),
    )

    def malformed(self, rng: random.Random) -> None:
        name, method, target, content, body = rng.choice(self.MALFORMED)
        with self.sales_lock:
            sale_id = rng.choice(list(self.sales)) if self.sales else 1
        path = {
            "transition": f"/api/sales/{sale_id}/transition",
            "sales": "/api/sales",
            "refunds": f"/api/sales/{sale_id}/refunds",
            "refunds_nokey": f"/api/sales/{sale_id}/refunds",
            "receipts": "/api/receipts",
        }[target]
        if body is not None and target == "sales":
            body = dict(body, lines=[dict(ln, sku=self.skus[0]) for ln in body["lines"]])
        headers = {"Idempotency-Key": f"bad-{rng.random()}"} if target == "refunds" else {}
        resp, _ = self.api.call(
            "malformed", method, path, json_body=body, content=content, headers=headers
        )
        self.rec.note(f"malformed:{name}")
        if (
            resp is not None
            and resp.status_code not in MALFORMED_EXPECTED
            and resp.status_code != 503
        ):
            self.rec.violation(
                "malformed_not_4xx", name=name, status=resp.status_code, body=resp.text[:300]
            )
        elif resp is not None and resp.status_code < 500:
            try:
                err = resp.json()["error"]
                assert {"code", "message", "request_id"} <= set(err)
            except Exception:
                self.rec.violation(
                    "malformed_error_shape",
                    name=name,
                    status=resp.status_code,
                    body=resp.text[:200],
                )

    # --- refund flows -------------------------------------------------------------------------

    def _push(
        self, delay: float, action: str, sale_id: int, job_id: str | None = None, extra=None
    ) -> None:
        with self.heap_lock:
            heapq.heappush(
                self.heap,
                (time.monotonic() + delay, next(self.seq), action, sale_id, job_id, extra),
            )

    def _pop_ready(self):
        with self.heap_lock:
            if self.heap and self.heap[0][0] <= time.monotonic():
                return heapq.heappop(self.heap)
            return None

    def refunds_done(self) -> bool:
        """Every refund key is sent, or no sale is left that could still take one."""
        with self.refund_quota_lock:
            if self.refund_keys_sent >= self.n_refunds:
                return True
        with self.heap_lock:
            empty = not self.heap
        return empty and self.sale_flows_done.is_set()

    def refund_worker(self, stop: threading.Event) -> None:
        while not stop.is_set() and not self.refunds_done():
            item = self._pop_ready()
            if item is None:
                time.sleep(0.05)
                continue
            try:
                self._refund_step(*item[2:])
            except Exception as exc:
                self.rec.violation(
                    "harness_exception", where="refund_worker", error=f"{type(exc).__name__}: {exc}"
                )

    def _job(self, job_id: str) -> dict | None:
        resp, _ = self.api.call("job_poll", "GET", f"/api/jobs/{job_id}")
        if resp is None or resp.status_code != 200:
            if resp is not None:
                self.rec.violation(
                    "job_poll_unexpected",
                    job_id=job_id,
                    status=resp.status_code,
                    body=resp.text[:200],
                )
            return None
        return resp.json()

    def _refund_step(self, action: str, sale_id: int, job_id: str | None, extra) -> None:
        with self.sales_lock:
            state = self.sales[sale_id]
        if action == "await_pay":
            with self.refund_quota_lock:
                if self.refund_keys_sent >= self.n_refunds:
                    return
            job = self._job(state.pay_job)
            if job is None or job["status"] not in TERMINAL:
                self._push(1.0, "await_pay", sale_id)
            elif job["status"] == "succeeded":
                self._refund(state)
            return
        if action == "await_refund":
            job = self._job(job_id)
            if job is None or job["status"] not in TERMINAL:
                self._push(0.7, "await_refund", sale_id, job_id, extra)
                return
            if job["status"] == "succeeded":
                for lid, q in extra.items():
                    state.refunded[lid] = state.refunded.get(lid, 0) + q
                if any(state.remaining().values()) and self.rand().random() < 0.35:
                    self._push(0.1, "again", sale_id)
            return  # a failed refund job is judged from the database afterwards
        if action == "again":
            self._refund(state)

    def _refund(self, state: SaleState) -> None:
        remaining = state.remaining()
        left = {lid: q for lid, q in remaining.items() if q > 0}
        if not left:
            return
        with self.refund_quota_lock:
            if self.refund_keys_sent >= self.n_refunds:
                return
            self.refund_keys_sent += 1
            n = self.refund_keys_sent
        with self.rec.lock:
            self.rec.done_flows += 1
        rng = self.rand()
        state.refunds_sent += 1
        key = f"refund-{state.number}-{state.refunds_sent}"
        path = f"/api/sales/{state.sale_id}/refunds"
        # Exactly floor(n * rate) over-refunds among the first n refund keys, evenly spread.
        if int(n * self.over_rate) > int((n - 1) * self.over_rate):
            # Over-refund: one more than is left on a line: refused at the door, 422.
            lid = max(remaining, key=remaining.get)
            body = {
                "kind": "partial",
                "lines": [{"sale_line_id": lid, "quantity": remaining[lid] + 1}],
            }
            resp, _ = self.api.call(
                "refund_over", "POST", path, json_body=body, headers={"Idempotency-Key": key}
            )
            if resp is not None and not (
                resp.status_code == 422 and resp.json()["error"]["code"] == "over_refund"
            ):
                self.rec.violation(
                    "over_refund_not_refused",
                    sale_id=state.sale_id,
                    status=resp.status_code,
                    body=resp.text[:300],
                )
            return
        if rng.random() < 0.40:
            body, amounts = {"kind": "full"}, dict(left)
        else:
            picked = rng.sample(sorted(left), rng.randint(1, len(left)))
            amounts = {lid: rng.randint(1, left[lid]) for lid in picked}
            body = {
                "kind": "partial",
                "lines": [{"sale_line_id": lid, "quantity": q} for lid, q in amounts.items()],
            }
        job_id = self._submit_job("refund", state.sale_id, path, body, key)
        if job_id is None:
            return
        with self.refund_quota_lock:
            self.refund_amounts[job_id] = (state.sale_id, amounts)
        if rng.random() < self.dup_rate:
            self._duplicate("refund", state.sale_id, path, body, key, job_id)
        if rng.random() < self.conflict_rate:
            other = (
                {"kind": "partial", "lines": [{"sale_line_id": next(iter(left)), "quantity": 1}]}
                if body["kind"] == "full"
                else {"kind": "full"}
            )
            resp, _ = self.api.call(
                "refund_conflict", "POST", path, json_body=other, headers={"Idempotency-Key": key}
            )
            if resp is not None and not (
                resp.status_code == 409 and resp.json()["error"]["code"] == "idempotency_conflict"
            ):
                self.rec.violation(
                    "idempotency_conflict_not_409",
                    sale_id=state.sale_id,
                    status=resp.status_code,
                    body=resp.text[:300],
                )
        self._push(0.5, "await_refund", state.sale_id, job_id, amounts)


def as_table(counter: Counter) -> dict:
    out: dict = defaultdict(dict)
    for (kind, status), n in sorted(counter.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        out[kind][str(status)] = n
    return dict(out)


def dumps(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=False, default=str)
