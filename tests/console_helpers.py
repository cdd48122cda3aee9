"""Builders and page readers for the console tests (integration and system): rows as
the services leave them, and figures read back from the rendered HTML."""

import datetime
import html
import itertools
import re
import uuid

from django.test import Client
from django.utils import timezone

from stockflow.stock.models import (
    Batch,
    Job,
    Location,
    Product,
    Sale,
    SaleLine,
    StockMove,
    StockOnHand,
)
from tests.staff import make_staff

_seq = itertools.count(1)


# --- builders -------------------------------------------------------------------------


def staff_client(user=None) -> Client:
    c = Client()
    c.force_login(user or make_staff())
    return c


def location(code="MAIN") -> Location:
    return Location.objects.get_or_create(code=code)[0]


def batch(sku: str, lot: str, quantity: int, expires_in_days: int | None, loc="MAIN") -> Batch:
    """A batch received the way the service does it: batch, on-hand row and RECEIPT move."""
    p = Product.objects.get_or_create(sku=sku, defaults={"name": f"Product {sku}"})[0]
    today = timezone.now().date()
    b = Batch.objects.create(
        product=p,
        location=location(loc),
        lot=lot,
        expires_on=None
        if expires_in_days is None
        else today + datetime.timedelta(days=expires_in_days),
    )
    StockOnHand.objects.create(batch=b, quantity=quantity)
    if quantity:
        StockMove.objects.create(kind=StockMove.Kind.RECEIPT, batch=b, quantity=quantity)
    return b


def a_sale(sku="SKU-J") -> Sale:
    p = Product.objects.get_or_create(sku=sku, defaults={"name": "p"})[0]
    s = Sale.objects.create(number=f"S-{next(_seq)}-{uuid.uuid4().hex[:6]}", location=location())
    SaleLine.objects.create(sale=s, product=p, quantity=1, unit_price="1.00")
    return s


def job(
    sale: Sale,
    status: str,
    *,
    kind=Job.Kind.SALE_PAID,
    code="",
    attempts=1,
    age_min=5.0,
    finished_after_s=1.0,
    request_id=None,
    message="",
) -> Job:
    """A job row as the outbox leaves it: created `age_min` minutes ago."""
    now = timezone.now()
    created = now - datetime.timedelta(minutes=age_min)
    terminal = status in (Job.Status.SUCCEEDED, Job.Status.FAILED)
    return Job.objects.create(
        kind=kind,
        sale=sale,
        location_id=sale.location_id,
        payload={},
        fingerprint=uuid.uuid4().hex,
        status=status,
        attempts=attempts,
        error_code=code,
        error_message=message or (f"{code} happened" if code else ""),
        request_id=request_id or f"req-{uuid.uuid4().hex[:12]}",
        created_at=created,
        started_at=created if status != Job.Status.QUEUED else None,
        finished_at=created + datetime.timedelta(seconds=finished_after_s) if terminal else None,
        lease_expires_at=created + datetime.timedelta(seconds=30),
    )


def jobs_bulk(n: int, status: str, *, code="", attempts=1, age_min=5.0):
    """n terminal sale.paid jobs on one sale (terminal jobs may share a sale)."""
    s = a_sale()
    now = timezone.now()
    created = now - datetime.timedelta(minutes=age_min)
    Job.objects.bulk_create(
        Job(
            kind=Job.Kind.SALE_PAID,
            sale=s,
            location_id=s.location_id,
            payload={},
            fingerprint=uuid.uuid4().hex,
            status=status,
            attempts=attempts,
            error_code=code,
            request_id="bulk",
            created_at=created,
            started_at=created,
            finished_at=created + datetime.timedelta(seconds=1),
            lease_expires_at=created,
        )
        for _ in range(n)
    )


# --- reading the page ---------------------------------------------------------------


def text_of(page: str, testid: str) -> str:
    m = re.search(
        rf'data-testid="{re.escape(testid)}"[^>]*>(.*?)</(?:td|th|span|strong|div|code|dd|a|pre|p)>',
        page,
        re.S,
    )
    assert m, f"no element with data-testid={testid!r}"
    return html.unescape(re.sub(r"<[^>]+>", "", m.group(1))).strip()


def number(page: str, testid: str) -> int:
    return int(text_of(page, testid))


def stock_rows(page: str) -> dict[int, tuple[str, int]]:
    """{batch id: (state, on hand)} as shown in the stock table."""
    rows = {}
    for m in re.finditer(
        r'<tr class="([^"]*)" data-batch="(\d+)" data-state="(\w+)">(.*?)</tr>', page, re.S
    ):
        qty = re.search(r'<td class="num onhand">(-?\d+)</td>', m.group(4))
        rows[int(m.group(2))] = (m.group(3), int(qty.group(1)), m.group(1).split())
    return rows


def failure_rows(page: str) -> dict[str, str]:
    """{job id: row html} of the failures table."""
    return {
        m.group(1): m.group(2)
        for m in re.finditer(r'<tr data-job="([0-9a-f-]{36})">(.*?)</tr>', page, re.S)
    }


def get_page(c: Client, url="/console/", **params) -> str:
    r = c.get(url, params)
    assert r.status_code == 200, r.status_code
    return r.content.decode()
