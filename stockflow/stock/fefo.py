"""FEFO allocation: pure functions over rows that are already locked."""

import datetime
from dataclasses import dataclass

from stockflow.platform.errors import DomainError, ErrorCode

from .models import StockOnHand


@dataclass(frozen=True)
class LineRequest:
    line_id: int
    product_id: int
    sku: str
    quantity: int


@dataclass(frozen=True)
class Allocation:
    line_id: int
    on_hand: StockOnHand
    quantity: int


def _fefo_key(row: StockOnHand):
    # Earliest expiry first; never-expiring stock last; batch id breaks ties.
    expires = row.batch.expires_on
    return (expires is None, expires or datetime.date.max, row.batch_id)


def allocate(
    lines: list[LineRequest], rows: list[StockOnHand], today: datetime.date
) -> list[Allocation]:
    """Allocate every line FEFO from non-expired rows, or raise one DomainError listing
    every short line. Lines of the same product draw from the same running balance."""
    remaining = {row.batch_id: row.quantity for row in rows}
    by_product: dict[int, list[StockOnHand]] = {}
    for row in sorted(rows, key=_fefo_key):
        by_product.setdefault(row.batch.product_id, []).append(row)

    allocations, shortfalls = [], []
    for line in lines:
        need = line.quantity
        candidates = by_product.get(line.product_id, [])
        for row in candidates:
            if need == 0:
                break
            if row.batch.is_expired_on(today) or remaining[row.batch_id] == 0:
                continue
            take = min(need, remaining[row.batch_id])
            remaining[row.batch_id] -= take
            need -= take
            allocations.append(Allocation(line.line_id, row, take))
        if need:
            expired = sum(remaining[r.batch_id] for r in candidates if r.batch.is_expired_on(today))
            shortfalls.append(
                {
                    "sale_line_id": line.line_id,
                    "sku": line.sku,
                    "requested": line.quantity,
                    "missing": need,
                    "expired_available": expired,
                }
            )
    if shortfalls:
        # Only expired stock could cover every short line -> expired_batch; otherwise plain shortage.
        if all(s["expired_available"] >= s["missing"] for s in shortfalls):
            raise DomainError(
                ErrorCode.EXPIRED_BATCH, "only expired stock could cover the sale", shortfalls
            )
        raise DomainError(ErrorCode.INSUFFICIENT_STOCK, "not enough sellable stock", shortfalls)
    return allocations
