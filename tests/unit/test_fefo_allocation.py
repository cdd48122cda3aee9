"""fefo.allocate: which batches a sale consumes, over rows built in memory (no database)."""

import datetime

import pytest

from stockflow.platform.errors import DomainError, ErrorCode
from stockflow.stock.fefo import LineRequest, allocate
from stockflow.stock.models import Batch, StockOnHand

TODAY = datetime.date(2026, 6, 1)
YESTERDAY = TODAY - datetime.timedelta(days=1)


def row(batch_id: int, quantity: int, expires_on: datetime.date | None, product_id: int = 1):
    batch = Batch(
        id=batch_id, product_id=product_id, location_id=1, lot=f"L{batch_id}", expires_on=expires_on
    )
    return StockOnHand(id=batch_id, batch=batch, quantity=quantity)


def line(line_id: int, quantity: int, product_id: int = 1, sku: str = "SKU-1"):
    return LineRequest(line_id, product_id, sku, quantity)


def taken(allocations) -> list[tuple[int, int, int]]:
    return [(a.line_id, a.on_hand.batch_id, a.quantity) for a in allocations]


def shortfall(lines, rows) -> DomainError:
    with pytest.raises(DomainError) as caught:
        allocate(lines, rows, TODAY)
    return caught.value


def test_earliest_expiry_first_whatever_the_row_order_or_batch_id():
    rows = [
        row(1, 5, datetime.date(2026, 9, 1)),
        row(2, 5, datetime.date(2026, 7, 1)),
        row(3, 5, datetime.date(2026, 8, 1)),
    ]
    assert taken(allocate([line(10, 7)], rows, TODAY)) == [(10, 2, 5), (10, 3, 2)]


def test_never_expiring_stock_is_consumed_last():
    rows = [row(1, 4, None), row(2, 4, datetime.date(2027, 1, 1))]
    assert taken(allocate([line(10, 3)], rows, TODAY)) == [(10, 2, 3)]
    assert taken(allocate([line(10, 6)], rows, TODAY)) == [(10, 2, 4), (10, 1, 2)]


def test_batch_id_breaks_ties_between_equal_expiries():
    same = datetime.date(2026, 7, 1)
    rows = [row(9, 5, same), row(4, 5, same)]
    assert taken(allocate([line(10, 6)], rows, TODAY)) == [(10, 4, 5), (10, 9, 1)]


def test_expired_batches_are_skipped_and_a_batch_expiring_today_still_sells():
    rows = [row(1, 10, YESTERDAY), row(2, 2, TODAY), row(3, 5, datetime.date(2026, 8, 1))]
    assert taken(allocate([line(10, 4)], rows, TODAY)) == [(10, 2, 2), (10, 3, 2)]


def test_only_expired_stock_could_cover_it_is_expired_batch():
    error = shortfall([line(10, 5)], [row(1, 10, YESTERDAY), row(2, 2, None)])
    assert error.code == ErrorCode.EXPIRED_BATCH
    assert error.details == [
        {"sale_line_id": 10, "sku": "SKU-1", "requested": 5, "missing": 3, "expired_available": 10}
    ]


def test_not_enough_even_counting_expired_stock_is_insufficient_stock():
    error = shortfall([line(10, 5)], [row(1, 1, YESTERDAY), row(2, 2, None)])
    assert error.code == ErrorCode.INSUFFICIENT_STOCK
    assert error.details[0]["missing"] == 3
    assert error.details[0]["expired_available"] == 1


def test_expired_batch_only_when_expired_stock_covers_every_short_line():
    rows = [row(1, 9, YESTERDAY, product_id=1), row(2, 1, YESTERDAY, product_id=2)]
    error = shortfall([line(10, 3, 1, "A"), line(11, 3, 2, "B")], rows)
    assert error.code == ErrorCode.INSUFFICIENT_STOCK


def test_one_error_lists_every_short_line_and_nothing_is_allocated():
    rows = [row(1, 2, None, product_id=1), row(2, 50, None, product_id=2), row(3, 1, None, 3)]
    lines = [line(10, 5, 1, "A"), line(11, 5, 2, "B"), line(12, 4, 3, "C")]
    error = shortfall(lines, rows)
    assert error.code == ErrorCode.INSUFFICIENT_STOCK
    assert [(d["sale_line_id"], d["sku"], d["requested"], d["missing"]) for d in error.details] == [
        (10, "A", 5, 3),
        (12, "C", 4, 3),
    ]


def test_a_product_with_no_stock_row_at_all_is_short_by_its_whole_quantity():
    error = shortfall([line(10, 2, product_id=7, sku="NONE")], [row(1, 5, None)])
    assert error.code == ErrorCode.INSUFFICIENT_STOCK
    assert error.details[0]["missing"] == 2


def test_two_lines_of_one_product_share_the_balance():
    rows = [row(1, 5, datetime.date(2026, 7, 1)), row(2, 5, datetime.date(2026, 8, 1))]
    assert taken(allocate([line(10, 3), line(11, 4)], rows, TODAY)) == [
        (10, 1, 3),
        (11, 1, 2),
        (11, 2, 2),
    ]
    error = shortfall([line(10, 6), line(11, 5)], rows)
    assert [(d["sale_line_id"], d["missing"]) for d in error.details] == [(11, 1)]
