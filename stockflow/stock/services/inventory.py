"""Stock in, stock out: the only code that writes StockOnHand and StockMove."""

import datetime

from django.db import IntegrityError, connection, transaction
from django.db.models import Sum

from stockflow.platform.errors import DomainError, ErrorCode
from stockflow.stock import locks

from ..models import Batch, Location, Product, StockMove, StockOnHand


def create_product(sku: str, name: str) -> Product:
    try:
        with transaction.atomic():
            return Product.objects.create(sku=sku, name=name)
    except IntegrityError:
        raise DomainError(ErrorCode.CONFLICT, f"product {sku!r} already exists") from None


def product_by_sku(sku: str) -> Product:
    product = Product.objects.filter(sku=sku).first()
    if product is None:
        raise DomainError(ErrorCode.UNKNOWN_SKU, f"unknown sku {sku!r}")
    return product


def location_by_code(code: str) -> Location:
    location = Location.objects.filter(code=code).first()
    if location is None:
        raise DomainError(ErrorCode.UNKNOWN_LOCATION, f"unknown location {code!r}")
    return location


def _batch_for_receipt(product, location, lot, expires_on) -> Batch:
    # get_or_create races are settled by the unique constraint; the loser reads the winner's row.
    for _ in range(2):
        batch = Batch.objects.filter(product=product, location=location, lot=lot).first()
        if batch is not None:
            break
        try:
            with transaction.atomic():
                batch = Batch.objects.create(
                    product=product, location=location, lot=lot, expires_on=expires_on
                )
                StockOnHand.objects.create(batch=batch, quantity=0)
            break
        except IntegrityError:
            continue
    if batch.expires_on != expires_on:
        raise DomainError(
            ErrorCode.CONFLICT,
            f"lot {lot!r} already exists with expiry {batch.expires_on}, not {expires_on}",
        )
    return batch


def receive_stock(
    sku: str,
    location_code: str,
    lot: str,
    expires_on: datetime.date | None,
    quantity: int,
    request_id="",
    idempotency_key: str | None = None,
) -> tuple[StockMove, StockOnHand]:
    """Stock in: a RECEIPT move, on-hand up by `quantity`. Under an `idempotency_key`
    already used, the same receipt answers with the first (its move, on-hand as it left
    it) and writes nothing; another receipt is IDEMPOTENCY_CONFLICT. Copies racing: the
    unique index lets one insert, the others roll back and answer with it."""
    key = idempotency_key or None
    receipt = (sku, location_code, lot, expires_on, quantity)
    earlier = _earlier_receipt(key, *receipt) if key else None
    if earlier is not None:
        return earlier
    try:
        return _receive(*receipt, request_id, key)
    except IntegrityError:
        earlier = _earlier_receipt(key, *receipt) if key else None
        if earlier is None:
            raise
        return earlier


def _earlier_receipt(
    key: str, sku, location_code, lot, expires_on, quantity
) -> tuple[StockMove, StockOnHand] | None:
    move = (
        StockMove.objects.select_related("batch__product", "batch__location")
        .filter(kind=StockMove.Kind.RECEIPT, idempotency_key=key)
        .first()
    )
    if move is None:
        return None
    b = move.batch
    if (b.product.sku, b.location.code, b.lot, b.expires_on, move.quantity) != (
        sku,
        location_code,
        lot,
        expires_on,
        quantity,
    ):
        raise DomainError(
            ErrorCode.IDEMPOTENCY_CONFLICT,
            "this Idempotency-Key was already used with a different receipt",
        )
    # On-hand as the receipt left it: every move of a batch is written holding its on-hand
    # row lock, so one batch's move ids follow commit order.
    left = StockMove.objects.filter(batch_id=b.pk, id__lte=move.pk).aggregate(s=Sum("quantity"))
    return move, StockOnHand(batch=b, quantity=left["s"])


@transaction.atomic
def _receive(sku, location_code, lot, expires_on, quantity, request_id, key):
    product = product_by_sku(sku)
    location, _ = Location.objects.get_or_create(code=location_code)
    batch = _batch_for_receipt(product, location, lot, expires_on)
    on_hand = locks.stock_of_batch(batch.pk)  # one row: cannot take part in a deadlock
    on_hand.quantity += quantity
    on_hand.save(update_fields=["quantity"])
    move = StockMove.objects.create(
        kind=StockMove.Kind.RECEIPT,
        batch=batch,
        quantity=quantity,
        request_id=request_id,
        idempotency_key=key,
    )
    return move, on_hand


# (column, PostgreSQL type): one array parameter per column, unnested into rows.
_MOVE_COLUMNS = (
    ("kind", "varchar"),
    ("batch_id", "bigint"),
    ("quantity", "int"),
    ("sale_line_id", "bigint"),
    ("refund_line_id", "bigint"),
    ("job_id", "uuid"),
    ("request_id", "varchar"),
    ("created_at", "timestamptz"),
)
_WRITE_MOVES = f"""
    WITH moved AS (
        INSERT INTO {StockMove._meta.db_table} ({", ".join(c for c, _ in _MOVE_COLUMNS)})
        SELECT * FROM unnest({", ".join(f"%s::{t}[]" for _, t in _MOVE_COLUMNS)})
        RETURNING batch_id, quantity
    )
    UPDATE {StockOnHand._meta.db_table} soh SET quantity = soh.quantity + d.delta
    FROM (SELECT batch_id, sum(quantity) AS delta FROM moved GROUP BY batch_id) d
    WHERE soh.batch_id = d.batch_id"""


def write_moves(moves: list[StockMove]) -> None:
    """Append ledger rows and apply them to their (already locked) on-hand rows, in one
    statement: each on-hand row changes by exactly the sum of the moves written for it."""
    if not moves:
        return
    with connection.cursor() as cursor:
        cursor.execute(_WRITE_MOVES, [[getattr(m, c) for m in moves] for c, _ in _MOVE_COLUMNS])


def stock_levels(sku: str | None = None, location_code: str | None = None):
    rows = StockOnHand.objects.select_related("batch__product", "batch__location").order_by(
        "batch__product__sku", "batch__location__code", "batch__expires_on", "batch_id"
    )
    if sku:
        rows = rows.filter(batch__product__sku=sku)
    if location_code:
        rows = rows.filter(batch__location__code=location_code)
    return rows
