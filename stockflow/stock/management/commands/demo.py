"""Walk a running stockflow through sale -> paid -> partial refund -> full refund, over HTTP."""

import datetime
import os
import time

import httpx
from django.core.management.base import BaseCommand, CommandError

from stockflow.accounts.models import ApiToken


class Command(BaseCommand):
    help = "Against a running system: receive stock, sell, pay, refund partly and fully; print each job."

    def add_arguments(self, parser):
        parser.add_argument("--url", default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}")

    def handle(self, *args, url, **options):
        _, raw = ApiToken.issue("demo")
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {raw}"}, timeout=10
        )
        try:
            self.http.get("/healthz").raise_for_status()
        except httpx.HTTPError as exc:
            raise CommandError(f"no stockflow at {url} ({exc}); start it with `make run`") from exc
        run = datetime.datetime.now().strftime("%H%M%S")
        sku, today = f"DEMO-{run}", datetime.date.today()

        self.say(f"product {sku} with four batches at MAIN")
        self.call("POST", "/api/products", {"sku": sku, "name": "Demo ibuprofen 200mg"})
        for lot, days, qty in (
            ("EXPIRED", -3, 10),
            ("SOON", 20, 3),
            ("LATER", 200, 5),
            ("NEVER", None, 50),
        ):
            expires = (
                (today + datetime.timedelta(days=days)).isoformat() if days is not None else None
            )
            self.call(
                "POST",
                "/api/receipts",
                {
                    "sku": sku,
                    "location": "MAIN",
                    "lot": lot,
                    "expires_on": expires,
                    "quantity": qty,
                },
            )
        self.stock(sku)

        sale = self.call(
            "POST",
            "/api/sales",
            {
                "number": f"DEMO-{run}",
                "location": "MAIN",
                "lines": [{"sku": sku, "quantity": 6, "unit_price": "4.20"}],
            },
        )
        self.say(
            f"sale {sale['number']} (6 units): pay it -> expect SOON 3 + LATER 3, EXPIRED untouched"
        )
        self.job(
            self.call("POST", f"/api/sales/{sale['id']}/transition", {"to_status": "paid"})["job"]
        )
        self.stock(sku)

        line = sale["lines"][0]["id"]
        self.say("partial refund of 2 units -> back to the latest-expiry batch consumed (LATER)")
        self.job(
            self.call(
                "POST",
                f"/api/sales/{sale['id']}/refunds",
                {"kind": "partial", "lines": [{"sale_line_id": line, "quantity": 2}]},
                key=f"demo-{run}-1",
            )["job"]
        )
        self.say("full refund of the rest -> the remaining 4 units back where they came from")
        self.job(
            self.call(
                "POST", f"/api/sales/{sale['id']}/refunds", {"kind": "full"}, key=f"demo-{run}-2"
            )["job"]
        )
        self.stock(sku)

        big = self.call(
            "POST",
            "/api/sales",
            {
                "number": f"DEMO-{run}-BIG",
                "location": "MAIN",
                "lines": [{"sku": sku, "quantity": 100, "unit_price": "4.20"}],
            },
        )
        self.say("a sale of 100 units -> insufficient_stock, nothing written")
        self.job(
            self.call("POST", f"/api/sales/{big['id']}/transition", {"to_status": "paid"})["job"]
        )
        final = self.call("GET", f"/api/sales/{sale['id']}")
        self.say(f"sale {final['number']} is {final['status']}; its ledger:")
        for m in final["moves"]:
            self.stdout.write(f"    {m['kind']:<9} lot {m['lot']:<8} {m['quantity']:+d}")

    def say(self, text):
        self.stdout.write(self.style.MIGRATE_HEADING(f"\n== {text}"))

    def call(self, method, path, body=None, key=None):
        headers = {"Idempotency-Key": key} if key else {}
        response = self.http.request(method, path, json=body, headers=headers)
        if response.status_code >= 400:
            raise CommandError(f"{method} {path} -> {response.status_code} {response.text}")
        return response.json()

    def job(self, job):
        deadline = time.time() + 30
        while job["status"] not in ("succeeded", "failed") and time.time() < deadline:
            time.sleep(0.2)
            job = self.call("GET", f"/api/jobs/{job['id']}")
        outcome = job["result"]["outcome"] if job["status"] == "succeeded" else job["error"]["code"]
        self.stdout.write(
            f"  job {job['id']} {job['kind']}: {job['status']} ({outcome}), attempts {job['attempts']}"
        )
        sign = -1 if job["kind"] == "sale.paid" else 1
        for move in (job["result"] or {}).get("moves", []):
            self.stdout.write(f"    batch {move['batch_id']}: {sign * move['quantity']:+d}")
        if job["status"] not in ("succeeded", "failed"):
            raise CommandError("job did not finish in 30s: is a worker running?")

    def stock(self, sku):
        rows = self.call("GET", f"/api/stock?sku={sku}")
        self.stdout.write(
            "  stock: "
            + ", ".join(
                f"{r['lot']}(batch {r['batch_id']}{', expired' if r['expired'] else ''})={r['on_hand']}"
                for r in rows
            )
        )
