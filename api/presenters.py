"""Model -> response body. One function per resource, shared by every route."""

from stockflow.leads.models import Lead
from stockflow.stock.models import Job, Sale, StockMove, StockOnHand
from stockflow.stock.services import refund


def job(j: Job) -> dict:
    return {
        "id": j.pk,
        "kind": j.kind,
        "sale_id": j.sale_id,
        "status": j.status,
        "attempts": j.attempts,
        "result": j.result,
        "error": {"code": j.error_code, "message": j.error_message} if j.error_code else None,
        "request_id": j.request_id,
        "created_at": j.created_at,
        "started_at": j.started_at,
        "finished_at": j.finished_at,
    }


def stock_row(row: StockOnHand, today=None) -> dict:
    b = row.batch
    return {
        "batch_id": b.pk,
        "sku": b.product.sku,
        "location": b.location.code,
        "lot": b.lot,
        "expires_on": b.expires_on,
        "expired": b.is_expired_on(today or b.location.today()),
        "on_hand": row.quantity,
    }


def sale(s: Sale) -> dict:
    refunded = refund.refunded_by_line(s)
    lines = list(s.lines.select_related("product"))

    moves = StockMove.objects.filter(sale_line__sale=s) | StockMove.objects.filter(
        refund_line__refund__sale=s
    )
    return {
        "id": s.pk,
        "number": s.number,
        "location": s.location.code,
        "status": s.status,
        "lines": [
            {
                "id": line.pk,
                "sku": line.product.sku,
                "quantity": line.quantity,
                "unit_price": str(line.unit_price),
                "refunded": refunded.get(line.pk, 0),
            }
            for line in lines
        ],
        "moves": [
            {
                "id": m.pk,
                "kind": m.kind,
                "batch_id": m.batch_id,
                "lot": m.batch.lot,
                "expires_on": m.batch.expires_on,
                "quantity": m.quantity,
                "sale_line_id": m.sale_line_id
                or (m.refund_line.sale_line_id if m.refund_line_id else None),
                "refund_line_id": m.refund_line_id,
                "job_id": m.job_id,
                "created_at": m.created_at,
            }
            for m in moves.select_related("batch", "refund_line").order_by("id")
        ],
    }


def lead(item: Lead) -> dict:
    return {
        "id": item.pk,
        "name": item.name,
        "email": item.email,
        "phone": item.phone,
        "message": item.message,
        "source": item.source,
        "created_at": item.created_at,
    }
