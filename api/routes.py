"""The operations of /api/: parse, authorize, call one service, answer."""

from typing import Annotated

from django.db import transaction
from django.http import HttpRequest, HttpResponse
from ninja import Header, Query, Router
from ninja.responses import Status

from stockflow.accounts import scopes
from stockflow.leads.models import Lead
from stockflow.stock.models import Job, Sale
from stockflow.stock.services import inventory, payment, refund, sales

from . import presenters
from .access import audited, scoped
from .pagination import CursorParam, PageSize, page
from .schemas import (
    ErrorOut,
    JobAccepted,
    LeadPage,
    ProductIn,
    ProductOut,
    ReceiptIn,
    ReceiptOut,
    RefundIn,
    SaleIn,
    SaleOut,
    StockPage,
    TransitionIn,
)

router = Router()
ERRORS = dict.fromkeys((400, 401, 403, 404, 409, 413, 415, 422, 503), ErrorOut)
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", default=None, max_length=128)
]
RequiredIdempotencyKey = Annotated[
    str, Header(alias="Idempotency-Key", min_length=1, max_length=128)
]


def _accepted(response: HttpResponse, job: Job) -> Status:
    response["Location"] = f"/api/jobs/{job.pk}"
    return Status(202, {"job": presenters.job(job)})


@router.post("/products", response={201: ProductOut, **ERRORS}, tags=["stock"])
@scoped(scopes.STOCK_WRITE)
def create_product(request: HttpRequest, body: ProductIn):
    product = inventory.create_product(body.sku, body.name)
    return Status(201, {"id": product.pk, "sku": product.sku, "name": product.name})


@router.post("/receipts", response={201: ReceiptOut, **ERRORS}, tags=["stock"])
@scoped(scopes.STOCK_WRITE)
def create_receipt(request: HttpRequest, body: ReceiptIn, idempotency_key: IdempotencyKey = None):
    move, on_hand = inventory.receive_stock(
        body.sku,
        body.location,
        body.lot,
        body.expires_on,
        body.quantity,
        request_id=request.request_id,
        idempotency_key=idempotency_key,
    )
    batch = move.batch
    return Status(
        201,
        {
            "move_id": move.pk,
            "batch_id": batch.pk,
            "sku": body.sku,
            "location": body.location,
            "lot": batch.lot,
            "expires_on": batch.expires_on,
            "quantity": move.quantity,
            "on_hand": on_hand.quantity,
        },
    )


@router.get("/stock", response={200: StockPage, **ERRORS}, tags=["stock"])
@scoped(scopes.READ)
def list_stock(
    request: HttpRequest,
    sku: Annotated[str | None, Query(max_length=64)] = None,
    location: Annotated[str | None, Query(max_length=64)] = None,
    cursor: CursorParam = None,
    page_size: PageSize = None,
):
    """On-hand per batch, in receipt order (batch id)."""
    rows = page(
        request,
        inventory.stock_levels(sku, location),
        ordering=("batch_id",),
        cursor=cursor,
        page_size=page_size,
        present=presenters.stock_row,
    )
    return Status(200, rows)


@router.post("/sales", response={201: SaleOut, **ERRORS}, tags=["sales"])
@scoped(scopes.SALES_WRITE)
def create_sale(request: HttpRequest, body: SaleIn):
    # The answer is read in the same transaction: a database lost after commit must not
    # turn a created sale into a 503 (the caller's retry would then meet a 409).
    with transaction.atomic():
        sale = sales.create_sale(body.number, body.location, [line.dict() for line in body.lines])
        return Status(201, presenters.sale(sale))


@router.get("/sales/{int:sale_id}", response={200: SaleOut, **ERRORS}, tags=["sales"])
@scoped(scopes.READ)
def get_sale(request: HttpRequest, sale_id: int):
    return Status(200, presenters.sale(sales.get_sale(sale_id)))


def _paid_at_once(
    request, audit_row, *, response, sale_id, body, idempotency_key=None
) -> Status | None:
    """`paid` with nothing in the way: job and audit row in one statement (None: the view
    decides, with the sale locked)."""
    if body.to_status != Sale.Status.PAID:
        return None
    job = payment.request_payment_at_once(
        sale_id, idempotency_key=idempotency_key, request_id=request.request_id, also=audit_row
    )
    return None if job is None else _accepted(response, job)


@router.post(
    "/sales/{int:sale_id}/transition",
    response={200: SaleOut, 202: JobAccepted, **ERRORS},
    tags=["sales"],
    summary="Change a sale's status; `paid` is accepted as a job (202)",
)
@audited("sale.transition", scopes.SALES_WRITE, at_once=_paid_at_once)
def transition_sale(
    request: HttpRequest,
    response: HttpResponse,
    sale_id: int,
    body: TransitionIn,
    idempotency_key: IdempotencyKey = None,
):
    if body.to_status == Sale.Status.PAID:
        job, _ = payment.request_payment(
            sale_id, idempotency_key=idempotency_key, request_id=request.request_id
        )
        return _accepted(response, job)
    return Status(200, presenters.sale(sales.transition(sale_id, body.to_status)))


@router.post("/sales/{int:sale_id}/refunds", response={202: JobAccepted, **ERRORS}, tags=["sales"])
@audited("sale.refund", scopes.REFUNDS_WRITE)
def create_refund(
    request: HttpRequest,
    response: HttpResponse,
    sale_id: int,
    body: RefundIn,
    idempotency_key: RequiredIdempotencyKey,
):
    lines = [line.dict() for line in body.lines] if body.lines else None
    job, _ = refund.request_refund(
        sale_id, body.kind, lines, idempotency_key=idempotency_key, request_id=request.request_id
    )
    return _accepted(response, job)


@router.get("/leads", response={200: LeadPage, **ERRORS}, tags=["leads"])
@scoped(scopes.LEADS_READ)
def list_leads(request: HttpRequest, cursor: CursorParam = None, page_size: PageSize = None):
    """Newest first."""
    leads = page(
        request,
        Lead.objects.all(),
        ordering=("-id",),
        cursor=cursor,
        page_size=page_size,
        present=presenters.lead,
    )
    return Status(200, leads)
