"""Walk a running stockflow through sale -> paid -> partial refund -> full refund, over HTTP.

    python -m harness.demo --url http://127.0.0.1:8000 [--token sf_...]

Without --token it makes a short-lived one with `manage.py create_api_token` (same
environment as this process, so the same database as the running system), scoped to what
the walk needs, and revokes it at the end, whatever happened. Prints every job and stock
move.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys

import httpx

from harness import client as api
from harness.client import Client, days, line
from harness.processes import PY, ROOT


class DemoError(Exception):
    pass


DEMO_SCOPES = "sales:write,refunds:write,stock:write,read"


def _manage(*args: str) -> str:
    out = subprocess.run(
        [PY, str(ROOT / "manage.py"), *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    if out.returncode:
        raise DemoError(f"manage.py {args[0]} failed: {out.stderr.strip()[-800:]}")
    return out.stdout.strip()


def create_token(name: str) -> str:
    return _manage("create_api_token", name, "--scopes", DEMO_SCOPES).splitlines()[-1]


def revoke_token(name: str) -> None:
    _manage("revoke_api_token", name)


def say(text: str) -> None:
    # Bold on a terminal, as Django's MIGRATE_HEADING style was.
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}")


def ok(response: httpx.Response) -> dict:
    if response.status_code >= 400:
        request = response.request
        raise DemoError(
            f"{request.method} {request.url.path} -> {response.status_code} {response.text}"
        )
    return response.json()


def show_job(http: Client, job: dict) -> None:
    job = api.wait_for_job(http, job["id"], timeout=30, interval=0.2)
    if job["status"] not in ("succeeded", "failed"):
        raise DemoError("job did not finish in 30s: is a worker running?")
    outcome = job["result"]["outcome"] if job["status"] == "succeeded" else job["error"]["code"]
    print(
        f"  job {job['id']} {job['kind']}: {job['status']} ({outcome}), attempts {job['attempts']}"
    )
    sign = -1 if job["kind"] == "sale.paid" else 1
    for move in (job["result"] or {}).get("moves", []):
        print(f"    batch {move['batch_id']}: {sign * move['quantity']:+d}")


def show_stock(http: Client, sku: str) -> None:
    rows = ok(api.stock(http, sku=sku))["results"]
    print(
        "  stock: "
        + ", ".join(
            f"{r['lot']}(batch {r['batch_id']}{', expired' if r['expired'] else ''})={r['on_hand']}"
            for r in rows
        )
    )


def demo(http: Client) -> None:
    run = datetime.datetime.now().strftime("%H%M%S")
    sku = f"DEMO-{run}"

    say(f"product {sku} with four batches at MAIN")
    ok(api.product(http, sku, "Demo ibuprofen 200mg"))
    for lot, expires_in, qty in (("EXPIRED", -3, 10), ("SOON", 20, 3), ("LATER", 200, 5), ("NEVER", None, 50)):  # fmt: skip
        ok(api.receipt(http, sku, lot, qty, days(expires_in) if expires_in is not None else None))
    show_stock(http, sku)

    sale = ok(api.sale(http, f"DEMO-{run}", [line(sku, 6, "4.20")]))
    say(f"sale {sale['number']} (6 units): pay it -> expect SOON 3 + LATER 3, EXPIRED untouched")
    show_job(http, ok(api.pay(http, sale["id"]))["job"])
    show_stock(http, sku)

    line_id = sale["lines"][0]["id"]
    say("partial refund of 2 units -> back to the latest-expiry batch consumed (LATER)")
    partial = [{"sale_line_id": line_id, "quantity": 2}]
    show_job(http, ok(api.refund(http, sale["id"], f"demo-{run}-1", "partial", partial))["job"])
    say("full refund of the rest -> the remaining 4 units back where they came from")
    show_job(http, ok(api.refund(http, sale["id"], f"demo-{run}-2"))["job"])
    show_stock(http, sku)

    big = ok(api.sale(http, f"DEMO-{run}-BIG", [line(sku, 100, "4.20")]))
    say("a sale of 100 units -> insufficient_stock, nothing written")
    show_job(http, ok(api.pay(http, big["id"]))["job"])
    final = ok(api.get_sale(http, sale["id"]))
    say(f"sale {final['number']} is {final['status']}; its ledger:")
    for m in final["moves"]:
        print(f"    {m['kind']:<9} lot {m['lot']:<8} {m['quantity']:+d}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser("python -m harness.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}")
    ap.add_argument(
        "--token", help="API bearer token; default: a new one for this run, revoked at its end"
    )
    args = ap.parse_args(argv)
    try:
        with Client(args.url, timeout=10) as probe:
            probe.get("/healthz").raise_for_status()
    except httpx.HTTPError as exc:
        print(f"no stockflow at {args.url} ({exc}); start it with `make run`", file=sys.stderr)
        return 1
    own = None if args.token else f"demo-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    try:
        token = args.token or create_token(own)
        try:
            with Client(args.url, token, timeout=10, request_id_prefix="demo") as http:
                demo(http)
        finally:
            if own:
                revoke_token(own)  # no all-powerful token left behind by a demo
    except (DemoError, httpx.HTTPError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
