"""A reusable HTTP load generator for stockflow: sales paid through the public API.

    python -m harness.loadgen --url http://127.0.0.1:8000 --token sf_... --rate 200 --duration 10 --lines 3 --skus 50

1. setup (unless --no-setup): the SKUs `<prefix>000..` exist (POST /api/products, 409 = already
   there) and each gets 5 batches of stock at --location (POST /api/receipts);
2. the sales are created as drafts (POST /api/sales), before anything is timed;
3. timed: POST /api/sales/{id}/transition {"to_status": "paid"} for each sale, either
   open-loop at --rate requests/s (sends follow a fixed clock whatever the answers, so a
   slow server shows as queueing; latency is measured from the *scheduled* send time) or,
   with --rate 0, closed-loop as fast as --concurrency requests in flight allow;
4. with --wait-jobs: GET /api/jobs/{id} until every accepted job is finished, and jobs/s =
   jobs / (last finished_at - first created_at).

Prints one JSON document. Only HTTP: it works against any stockflow deployment, and it
starts no server (get a token with `manage.py create_api_token NAME`). The asyncio engine
(open_loop, closed_loop, summarize) is importable (bench/ uses it).

The timed requests go through `LeanClient`: HTTP/1.1 keep-alive on raw asyncio streams,
request bytes built by string formatting, responses parsed by Content-Length. An httpx
AsyncClient costs ≈ 7 ms of CPU per request (1.4 cores at 200 req/s: the phase measured
the generator); this one costs a small fraction of a millisecond (the bench reports it as
`generator.cpu_ms_per_request`). Setup requests (products, receipts, sales) still use
httpx: they are not timed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import math
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from harness.client import async_client
from harness.progress import Progress

BATCHES_PER_SKU = 5
TERMINAL = ("succeeded", "failed")


# --- the engine ----------------------------------------------------------------------------


class Response:
    """What the engine reads of an answer: the status and the body."""

    __slots__ = ("status_code", "content")

    def __init__(self, status_code: int, content: bytes):
        self.status_code, self.content = status_code, content

    def json(self):
        return json.loads(self.content)


class LeanClient:
    """A cheap HTTP/1.1 client for load: keep-alive connections on asyncio streams, at most
    `max_connections` open (an open loop needs more than one per in-flight request only
    when the server is slower than the offered rate), no redirects, no cookies, no
    decompression. Only what stockflow's API answers: Content-Length or chunked bodies."""

    def __init__(self, url: str, token: str | None = None, *, max_connections: int = 1024,
                 timeout: float = 30.0):  # fmt: skip
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self._head = f"Host: {self.host}:{self.port}\r\n{auth}"
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._all: set[asyncio.StreamWriter] = set()
        self.connections_opened = 0

    async def __aenter__(self) -> LeanClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for w in list(self._all):
            w.close()
        self._all.clear()
        self._idle.clear()

    def post(self, path: str, json: dict | None = None) -> Awaitable[Response]:
        body = b"" if json is None else _dumps(json)
        return self.request("POST", path, body)

    def get(self, path: str) -> Awaitable[Response]:
        return self.request("GET", path, None)

    async def request(self, method: str, path: str, body: bytes | None) -> Response:
        if body is None:
            head = f"{method} {path} HTTP/1.1\r\n{self._head}\r\n"
        else:
            head = (
                f"{method} {path} HTTP/1.1\r\n{self._head}Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
        data = head.encode() + (body or b"")
        async with self._slots:
            async with asyncio.timeout(self.timeout):
                # A reused connection the server closed while idle (gunicorn's keepalive)
                # fails before any answer: the request never reached it, so resend once.
                if self._idle:
                    conn = self._idle.pop()
                    try:
                        return await self._exchange(conn, data)
                    except asyncio.IncompleteReadError as exc:
                        if exc.partial:  # an answer had begun: not a stale connection
                            raise
                    except ConnectionError:
                        pass
                return await self._exchange(await self._open(), data)

    async def _open(self):
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self._all.add(writer)
        self.connections_opened += 1
        return reader, writer

    async def _exchange(self, conn, data: bytes) -> Response:
        reader, writer = conn
        try:
            writer.write(data)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            lower = head.lower()
            i = lower.find(b"\r\ncontent-length:")
            if i >= 0:
                end = lower.index(b"\r\n", i + 2)
                content = await reader.readexactly(int(lower[i + 17 : end]))
            elif b"\r\ntransfer-encoding: chunked" in lower:
                content = await _read_chunked(reader)
            else:
                content = b""
        except BaseException:
            self._forget(writer)
            raise
        if b"\r\nconnection: close" in lower:
            self._forget(writer)
        else:
            self._idle.append(conn)
        return Response(status, content)

    def _forget(self, writer: asyncio.StreamWriter) -> None:
        self._all.discard(writer)
        writer.close()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        chunk = await reader.readexactly(size + 2)
        if not size:
            return bytes(out)
        out += chunk[:-2]


def _dumps(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# Transport failures a sample records as status 0 instead of raising.
TRANSPORT_ERRORS = (httpx.HTTPError, OSError, asyncio.IncompleteReadError, TimeoutError, ValueError)


@dataclass
class Sample:
    index: int
    scheduled: float  # loop clock; == sent for closed-loop
    sent: float
    done: float
    status: int  # HTTP status, 0 = transport error / timeout
    error: str = ""
    body: dict | None = None

    @property
    def latency(self) -> float:  # from the scheduled send time (open-loop: includes client lag)
        return self.done - self.scheduled

    @property
    def service_time(self) -> float:  # from the actual send
        return self.done - self.sent


Client = httpx.AsyncClient | LeanClient
Request = Callable[[Client, int], Awaitable[httpx.Response | Response]]


async def _one(
    client: Client, request: Request, i: int, scheduled: float, keep_body: bool
) -> Sample:
    loop = asyncio.get_running_loop()
    sent = loop.time()
    try:
        resp = await request(client, i)
        done = loop.time()
        body = None
        if keep_body:
            try:
                body = resp.json()
            except ValueError:
                body = None
        return Sample(i, scheduled, sent, done, resp.status_code, body=body)
    except TRANSPORT_ERRORS as exc:
        return Sample(i, scheduled, sent, loop.time(), 0, error=type(exc).__name__)


async def open_loop(
    client: Client, request: Request, count: int, rate: float, keep_body: bool = True
) -> tuple[list[Sample], dict]:
    """Send request(client, i) for i in range(count) at `rate`/s on a fixed schedule,
    never waiting for answers. Returns the samples and generator facts (send lag)."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    tasks, lags = [], []
    flight = {"now": 0, "max": 0}

    def finished(_task):
        flight["now"] -= 1

    for i in range(count):
        scheduled = start + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        lags.append(max(0.0, loop.time() - scheduled))
        task = asyncio.ensure_future(_one(client, request, i, scheduled, keep_body))
        flight["now"] += 1
        flight["max"] = max(flight["max"], flight["now"])
        task.add_done_callback(finished)
        tasks.append(task)
    samples = await asyncio.gather(*tasks)
    lags.sort()
    return list(samples), {
        "send_lag_ms_p99": round(1000 * percentile(lags, 99), 2),
        "send_lag_ms_max": round(1000 * lags[-1], 2) if lags else 0.0,
        "max_in_flight": flight["max"],
    }


async def closed_loop(
    client: Client,
    request: Request,
    count: int,
    concurrency: int,
    keep_body: bool = True,
) -> tuple[list[Sample], dict]:
    """Send request(client, i) for i in range(count), `concurrency` in flight at a time."""
    loop = asyncio.get_running_loop()
    it = iter(range(count))
    samples: list[Sample] = []

    async def runner():
        for i in it:
            samples.append(await _one(client, request, i, loop.time(), keep_body))

    await asyncio.gather(*(runner() for _ in range(max(1, min(concurrency, count)))))
    samples.sort(key=lambda s: s.index)
    return samples, {"concurrency": concurrency}


def percentile(sorted_values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (values must be sorted)."""
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def latency_summary(values_s: list[float]) -> dict:
    v = sorted(values_s)
    ms = lambda x: round(1000 * x, 2)  # noqa: E731
    return {
        "p50": ms(percentile(v, 50)),
        "p95": ms(percentile(v, 95)),
        "p99": ms(percentile(v, 99)),
        "max": ms(v[-1]) if v else float("nan"),
        "mean": ms(sum(v) / len(v)) if v else float("nan"),
    }


def summarize(samples: list[Sample], offered_rate: float | None = None) -> dict:
    statuses: dict[str, int] = {}
    for s in samples:
        key = str(s.status) if s.status else f"error:{s.error}"
        statuses[key] = statuses.get(key, 0) + 1
    ok = [s for s in samples if 200 <= s.status < 300]
    first = min((s.sent for s in samples), default=0.0)
    last = max((s.done for s in samples), default=0.0)
    out = {
        "requests": len(samples),
        "ok": len(ok),
        "statuses": statuses,
        "achieved_rps": round(len(samples) / (last - first), 1) if last > first else None,
        # Latency of the answered requests (2xx and 4xx alike: both did the server's work).
        "latency_ms": latency_summary([s.latency for s in samples if s.status]),
    }
    if offered_rate:
        out["offered_rps"] = offered_rate
        out["service_time_ms"] = latency_summary([s.service_time for s in samples if s.status])
    return out


def parse_time(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- the stockflow workload ---------------------------------------------------------------


@dataclass
class Workload:
    url: str
    token: str
    location: str = "LG"
    sku_prefix: str = "LG-SKU-"
    skus: int = 50
    lines: int = 3
    quantity: int = 1
    seed: int = 1
    timeout: float = 30.0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def sku_names(self) -> list[str]:
        return [f"{self.sku_prefix}{i:03d}" for i in range(self.skus)]

    def client(self, max_connections: int = 64) -> httpx.AsyncClient:
        return async_client(
            self.url, self.token, max_connections=max_connections, timeout=self.timeout
        )

    def sale_lines(self, rng: random.Random) -> list[dict]:
        skus = (
            rng.sample(self.sku_names, min(self.lines, self.skus))
            if self.lines <= self.skus
            else [rng.choice(self.sku_names) for _ in range(self.lines)]
        )
        return [{"sku": s, "quantity": self.quantity, "unit_price": "9.99"} for s in skus]

    async def setup(
        self, sales: int, stock_per_batch: int | None = None, concurrency: int = 8
    ) -> dict:
        """Products and 5 batches per SKU; enough stock for `sales` sales, twice over."""
        per_sku = sales * self.lines * self.quantity / self.skus
        per_batch = stock_per_batch or math.ceil(2 * per_sku / BATCHES_PER_SKU) + 5
        async with self.client(concurrency) as c:

            async def product(_c, i):
                sku = self.sku_names[i]
                return await _c.post("/api/products", json={"sku": sku, "name": f"loadgen {sku}"})

            products, _ = await closed_loop(c, product, self.skus, concurrency)
            bad = [s.status for s in products if s.status not in (201, 409)]
            if bad:
                raise RuntimeError(f"creating products failed: HTTP {bad[:5]}")

            async def receipt(_c, i):
                sku, lot = self.sku_names[i // BATCHES_PER_SKU], i % BATCHES_PER_SKU + 1
                return await _c.post(
                    "/api/receipts",
                    json={
                        "sku": sku,
                        "location": self.location,
                        "lot": f"LG-LOT-{lot}",
                        "expires_on": f"{2090 + lot}-01-01",
                        "quantity": per_batch,
                    },
                )

            receipts, _ = await closed_loop(c, receipt, self.skus * BATCHES_PER_SKU, concurrency)
            bad = [(s.status, s.body) for s in receipts if s.status != 201]
            if bad:
                raise RuntimeError(f"receipts failed: {bad[:3]}")
        return {
            "skus": self.skus,
            "batches_per_sku": BATCHES_PER_SKU,
            "received_per_batch": per_batch,
        }

    async def create_sales(self, count: int, concurrency: int = 8) -> list[int]:
        rng = random.Random(self.seed)
        bodies = [
            {
                "number": f"LG-{self.run_id}-{i}",
                "location": self.location,
                "lines": self.sale_lines(rng),
            }
            for i in range(count)
        ]
        async with self.client(concurrency) as c:
            samples, _ = await closed_loop(
                c, lambda _c, i: _c.post("/api/sales", json=bodies[i]), count, concurrency
            )
        bad = [(s.status, s.error, s.body) for s in samples if s.status != 201]
        if bad:
            raise RuntimeError(f"{len(bad)} sales not created, e.g. {bad[:3]}")
        return [s.body["id"] for s in samples]

    @staticmethod
    def pay_request(sale_ids: list[int]) -> Request:
        def request(c: Client, i: int):
            return c.post(f"/api/sales/{sale_ids[i]}/transition", json={"to_status": "paid"})

        return request

    async def pay(
        self, sale_ids: list[int], rate: float, concurrency: int
    ) -> tuple[list[Sample], dict]:
        request = self.pay_request(sale_ids)
        conns = 1024 if rate > 0 else concurrency
        async with LeanClient(
            self.url, self.token, max_connections=conns, timeout=self.timeout
        ) as c:
            cpu0 = time.thread_time()  # the event loop runs in this thread: the generator's CPU
            if rate > 0:
                samples, gen = await open_loop(c, request, len(sale_ids), rate)
            else:
                samples, gen = await closed_loop(c, request, len(sale_ids), concurrency)
        gen["cpu_ms_per_request"] = round(
            1000 * (time.thread_time() - cpu0) / max(1, len(samples)), 3
        )
        return samples, gen

    async def wait_jobs(self, job_ids: list[str], timeout: float, concurrency: int = 8) -> dict:
        """Poll GET /api/jobs/{id} until all are finished (or timeout)."""
        jobs: dict[str, dict] = {}
        pending = list(job_ids)
        deadline = time.monotonic() + timeout
        async with self.client(concurrency) as c:
            while pending and time.monotonic() < deadline:
                samples, _ = await closed_loop(
                    c,
                    lambda _c, i, pending=pending: _c.get(f"/api/jobs/{pending[i]}"),
                    len(pending),
                    concurrency,
                )
                for s in samples:
                    if s.status == 200 and s.body:
                        jobs[s.body["id"]] = s.body
                pending = [j for j in pending if jobs.get(j, {}).get("status") not in TERMINAL]
                if pending:
                    await asyncio.sleep(0.25)
        return job_stats(list(jobs.values()), unfinished=len(pending))


def job_stats(jobs: list[dict], unfinished: int = 0) -> dict:
    done = [j for j in jobs if j.get("status") in TERMINAL and j.get("finished_at")]
    outcomes: dict[str, int] = {}
    for j in done:
        key = (
            j["status"]
            if j["status"] == "succeeded"
            else f"failed:{(j.get('error') or {}).get('code', '?')}"
        )
        outcomes[key] = outcomes.get(key, 0) + 1
    out: dict = {
        "jobs": len(jobs),
        "finished": len(done),
        "unfinished": unfinished,
        "outcomes": outcomes,
    }
    if done:
        first = min(parse_time(j["created_at"]) for j in done)
        last = max(parse_time(j["finished_at"]) for j in done)
        span = (last - first).total_seconds()
        out["span_s"] = round(span, 3)
        out["jobs_per_s"] = round(len(done) / span, 1) if span > 0 else None
        out["accept_to_finish_ms"] = latency_summary(
            [
                (parse_time(j["finished_at"]) - parse_time(j["created_at"])).total_seconds()
                for j in done
            ]
        )
    return out


async def run(opts: dict) -> dict:
    w = Workload(
        url=opts["url"].rstrip("/"),
        token=opts["token"],
        location=opts["location"],
        sku_prefix=opts["sku_prefix"],
        skus=opts["skus"],
        lines=opts["lines"],
        quantity=opts["quantity"],
        seed=opts["seed"],
        timeout=opts["timeout"],
    )
    count = opts["count"]
    if not count and opts["rate"] > 0:
        count = max(1, round(opts["rate"] * opts["duration"]))
    if not count:
        raise ValueError("give --count, or --rate > 0 with --duration")
    result: dict = {
        "config": {
            k: opts[k]
            for k in (
                "url",
                "rate",
                "duration",
                "concurrency",
                "lines",
                "skus",
                "quantity",
                "location",
                "seed",
            )
        }
        | {"count": count, "mode": "open-loop" if opts["rate"] > 0 else "closed-loop"},
    }
    phase = ["setup"]

    async def tick():  # a progress line every few seconds on stderr (stdout is the JSON)
        progress = Progress(f"loadgen ({count} sales)")
        while True:
            await asyncio.sleep(1)
            progress.update(None, phase[0])

    ticker = asyncio.ensure_future(tick())
    try:
        if opts["setup"]:
            result["setup"] = await w.setup(count, opts["stock_per_batch"])
        t = time.monotonic()
        phase[0] = "creating sales"
        sale_ids = await w.create_sales(count, opts["concurrency"])
        result["sales_created"] = {
            "count": len(sale_ids),
            "seconds": round(time.monotonic() - t, 2),
        }
        phase[0] = "paying sales"
        samples, gen = await w.pay(sale_ids, opts["rate"], opts["concurrency"])
        result["transitions"] = summarize(samples, opts["rate"] or None) | {"generator": gen}
        if opts["wait_jobs"]:
            phase[0] = "waiting for jobs"
            job_ids = [s.body["job"]["id"] for s in samples if s.status == 202 and s.body]
            result["jobs"] = await w.wait_jobs(job_ids, opts["job_timeout"])
    finally:
        ticker.cancel()
    return result


def parse_args(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        "python -m harness.loadgen",
        description="HTTP load generator: create draft sales, then pay them at a fixed rate "
        "(open-loop) or max rate; JSON out.",
    )
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument(
        "--token", required=True, help="API bearer token (manage.py create_api_token NAME)"
    )
    ap.add_argument(
        "--rate",
        type=float,
        default=200.0,
        help="offered transitions/s, open-loop; 0 = as fast as --concurrency allows",
    )
    ap.add_argument(
        "--duration", type=float, default=10.0, help="seconds of load at --rate (sets --count)"
    )
    ap.add_argument(
        "--count", type=int, default=0, help="number of sales to pay (overrides --duration)"
    )
    ap.add_argument(
        "--concurrency", type=int, default=16, help="in-flight requests (setup and --rate 0)"
    )
    ap.add_argument("--lines", type=int, default=3, help="lines per sale (distinct SKUs)")
    ap.add_argument("--skus", type=int, default=50, help="SKUs the lines are drawn from")
    ap.add_argument("--quantity", type=int, default=1, help="quantity per line")
    ap.add_argument("--location", default="LG")
    ap.add_argument("--sku-prefix", default="LG-SKU-")
    ap.add_argument(
        "--stock-per-batch", type=int, default=None, help="default: twice the expected demand"
    )
    ap.add_argument(
        "--no-setup", dest="setup", action="store_false", help="products and stock exist already"
    )
    ap.add_argument(
        "--wait-jobs", action="store_true", help="poll the jobs until finished; adds jobs/s"
    )
    ap.add_argument("--job-timeout", type=float, default=300.0)
    ap.add_argument("--timeout", type=float, default=30.0, help="per-request timeout, seconds")
    ap.add_argument("--seed", type=int, default=1)
    opts = vars(ap.parse_args(argv))
    if opts["rate"] < 0:
        ap.error("--rate must be >= 0")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    # httpx logs every request at INFO; stdout is for the one JSON document.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        result = asyncio.run(run(opts))
    except (ValueError, RuntimeError, httpx.HTTPError) as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
