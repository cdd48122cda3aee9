"""Which batches a refund gives stock back to: a pure function over rows that are
already locked, the mirror of fefo.allocate."""

import datetime
from collections.abc import Iterable
from dataclasses import dataclass

from .models import StockOnHand


@dataclass(frozen=True)
class Allocation:
    sale_line_id: int
    batch_id: int
    quantity: int


def _give_back_key(row: StockOnHand):
    # Latest expiry first, so what goes back on the shelf sells last; never-expiring counts
    # as latest; the newest batch breaks ties. Sorted in reverse.
    expires = row.batch.expires_on
    return (expires is None, expires or datetime.date.min, row.batch_id)


def allocate(
    wanted: dict[int, int],
    refundable: dict[int, dict[int, int]],
    rows: Iterable[StockOnHand],
) -> list[Allocation]:
    """Per refund line ({sale_line_id: quantity}, in sale line order), give the quantity
    back to the batches that line consumed ({sale_line_id: {batch_id: still refundable}}),
    never more than a batch may take back. `rows` are the on-hand rows of those batches."""
    by_batch = {row.batch_id: row for row in rows}
    allocations = []
    for line_id, quantity in sorted(wanted.items()):
        batches = refundable.get(line_id, {})
        need = quantity
        order = sorted(
            (by_batch[b] for b, left in batches.items() if left > 0),
            key=_give_back_key,
            reverse=True,
        )
        for row in order:
            if need == 0:
                break
            take = min(need, batches[row.batch_id])
            need -= take
            allocations.append(Allocation(line_id, row.batch_id, take))
    return allocations
