"""refund_allocation.allocate: which batches a refund gives stock back to, over rows
built in memory (no database)."""

import datetime

from stockflow.stock.models import Batch, StockOnHand
from stockflow.stock.refund_allocation import allocate

JULY, SEPTEMBER = datetime.date(2026, 7, 1), datetime.date(2026, 9, 1)


def row(batch_id: int, expires_on: datetime.date | None):
    batch = Batch(
        id=batch_id, product_id=1, location_id=1, lot=f"L{batch_id}", expires_on=expires_on
    )
    return StockOnHand(id=batch_id, batch=batch, quantity=0)


def given(wanted, refundable, rows) -> list[tuple[int, int, int]]:
    return [(a.sale_line_id, a.batch_id, a.quantity) for a in allocate(wanted, refundable, rows)]


def test_latest_expiry_first():
    rows = [row(1, JULY), row(2, SEPTEMBER)]
    assert given({10: 4}, {10: {1: 2, 2: 3}}, rows) == [(10, 2, 3), (10, 1, 1)]


def test_never_expiring_counts_as_latest():
    rows = [row(1, SEPTEMBER), row(2, None)]
    assert given({10: 3}, {10: {1: 2, 2: 2}}, rows) == [(10, 2, 2), (10, 1, 1)]


def test_the_newest_batch_breaks_ties():
    rows = [row(5, JULY), row(7, JULY), row(6, None), row(8, None)]
    assert given({10: 2}, {10: {5: 1, 7: 1}}, rows) == [(10, 7, 1), (10, 5, 1)]
    assert given({10: 1}, {10: {6: 1, 8: 1}}, rows) == [(10, 8, 1)]


def test_a_batch_takes_back_no_more_than_the_line_took_from_it():
    rows = [row(1, JULY), row(2, SEPTEMBER)]
    assert given({10: 2}, {10: {1: 2, 2: 0}}, rows) == [(10, 1, 2)]


def test_each_line_goes_back_only_to_the_batches_it_consumed_in_sale_line_order():
    rows = [row(1, JULY), row(2, SEPTEMBER), row(3, None)]
    refundable = {10: {1: 4}, 11: {2: 1, 3: 1}}
    assert given({11: 2, 10: 3}, refundable, rows) == [(10, 1, 3), (11, 3, 1), (11, 2, 1)]


def test_a_line_not_refunded_gives_nothing_back():
    rows = [row(1, JULY), row(2, SEPTEMBER)]
    assert given({11: 1}, {10: {1: 4}, 11: {2: 1}}, rows) == [(11, 2, 1)]
