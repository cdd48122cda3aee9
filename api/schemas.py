"""Request and response bodies of the HTTP API (pydantic, via django-ninja)."""

import datetime
import uuid
from typing import Annotated, Literal

from ninja import Field, Schema
from pydantic import StrictInt, StrictStr, model_validator

Code = Annotated[
    StrictStr, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")
]
# The most units one receipt, sale line or refund line may carry (more is 422). Quantities
# are 64-bit in the database; with this bound every single move also fits 32 bits, and a
# batch's on-hand would need 9 billion maximal receipts to overflow.
MAX_QUANTITY_PER_LINE = 1_000_000_000
Quantity = Annotated[
    StrictInt,
    Field(gt=0, le=MAX_QUANTITY_PER_LINE, description=f"1 to {MAX_QUANTITY_PER_LINE:_} units"),
]
# ASCII digits only: `\d` would also take "١٢" (Arabic-Indic), which Decimal reads as 12.
Money = Annotated[
    StrictStr,
    Field(pattern=r"^[0-9]{1,10}(\.[0-9]{1,2})?$", description='decimal as a string, e.g. "12.50"'),
]


class ErrorBody(Schema):
    code: str
    message: str
    request_id: str
    details: list | dict | None = None


class ErrorOut(Schema):
    error: ErrorBody


class ProductIn(Schema):
    sku: Code
    name: Annotated[StrictStr, Field(min_length=1, max_length=200)]


class ProductOut(Schema):
    id: int
    sku: str
    name: str


class ReceiptIn(Schema):
    sku: Code
    location: Code
    lot: Code
    expires_on: datetime.date | None = None
    quantity: Quantity


class ReceiptOut(Schema):
    move_id: int
    batch_id: int
    sku: str
    location: str
    lot: str
    expires_on: datetime.date | None
    quantity: int
    on_hand: int


class StockRowOut(Schema):
    batch_id: int
    sku: str
    location: str
    lot: str
    expires_on: datetime.date | None
    expired: bool
    on_hand: int


class SaleLineIn(Schema):
    sku: Code
    quantity: Quantity
    unit_price: Money


class SaleIn(Schema):
    number: Code
    location: Code
    lines: Annotated[list[SaleLineIn], Field(min_length=1, max_length=100)]


class SaleLineOut(Schema):
    id: int
    sku: str
    quantity: int
    unit_price: str
    refunded: int


class MoveOut(Schema):
    id: int
    kind: str
    batch_id: int
    lot: str
    expires_on: datetime.date | None
    quantity: int
    sale_line_id: int | None
    refund_line_id: int | None
    job_id: uuid.UUID | None
    created_at: datetime.datetime


class SaleOut(Schema):
    id: int
    number: str
    location: str
    status: str
    lines: list[SaleLineOut]
    moves: list[MoveOut]


class TransitionIn(Schema):
    to_status: Literal["pending", "paid", "cancelled"]


class JobError(Schema):
    code: str
    message: str


class JobOut(Schema):
    id: uuid.UUID
    kind: str
    sale_id: int
    status: str
    attempts: int
    result: dict | None
    error: JobError | None
    request_id: str
    created_at: datetime.datetime
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None


class JobFilters(Schema):
    status: Literal["queued", "running", "succeeded", "failed"] | None = None
    kind: Literal["sale.paid", "sale.refund"] | None = None
    error_code: Annotated[str, Field(max_length=32)] | None = None
    sale_id: Annotated[int, Field(ge=1, le=2**63 - 1)] | None = None
    request_id: Annotated[str, Field(max_length=128)] | None = None
    created_after: datetime.datetime | None = None
    created_before: datetime.datetime | None = None


class JobAccepted(Schema):
    job: JobOut


class Page(Schema):
    """A page of a list endpoint (api/pagination.py): the other pages' URLs, null at an end."""

    next: str | None
    previous: str | None


class JobPage(Page):
    results: list[JobOut]


class RefundLineIn(Schema):
    sale_line_id: Annotated[StrictInt, Field(gt=0, le=2**63 - 1)]
    quantity: Quantity


class RefundIn(Schema):
    kind: Literal["full", "partial"]
    lines: Annotated[list[RefundLineIn], Field(max_length=100)] | None = None

    @model_validator(mode="after")
    def lines_match_kind(self):
        if self.kind == "partial" and not self.lines:
            raise ValueError("a partial refund needs at least one line")
        if self.kind == "full" and self.lines:
            raise ValueError("a full refund takes no lines")
        return self


class LeadIn(Schema):
    name: Annotated[StrictStr, Field(min_length=1, max_length=200)]
    email: Annotated[StrictStr, Field(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
    phone: Annotated[StrictStr, Field(max_length=32, pattern=r"^\+?[0-9 ().\-]{5,32}$")] | None = (
        None
    )
    message: Annotated[StrictStr, Field(max_length=5000)] = ""
    source: Annotated[StrictStr, Field(max_length=64, pattern=r"^[A-Za-z0-9._\-]*$")] = ""


class LeadCreated(Schema):
    id: int
    status: Literal["received"]


class LeadOut(Schema):
    id: int
    name: str
    email: str
    phone: str
    message: str
    source: str
    created_at: datetime.datetime


class StockPage(Page):
    results: list[StockRowOut]


class LeadPage(Page):
    results: list[LeadOut]
