"""Domain events and their metrics: the one place that turns outcomes of the sales
flows into log events (seed catalogue names) and counters."""

import structlog

from stockflow.observability import metrics

logger = structlog.get_logger("stockflow.domain")


def transition(sale_id: int, from_status: str, to_status: str, result: str, **fields) -> None:
    metrics.SALES_TRANSITION.labels(from_status, to_status, result).inc()
    logger.info(
        "sale.transition",
        entity_type="Sale",
        entity_id=sale_id,
        from_status=from_status,
        to_status=to_status,
        result=result,
        **fields,
    )


def refund_refused(sale_id: int, refund_type: str, code: str, details=None) -> None:
    """A refund refused at the API, before any job exists."""
    metrics.REFUNDS.labels(refund_type, code).inc()
    if code == "over_refund":
        over_refund_blocked(sale_id, details)


def over_refund_blocked(sale_id: int, details) -> None:
    metrics.OVER_REFUND_ATTEMPTS.inc()
    for line in details if isinstance(details, list) else [{}]:
        logger.warning(
            "sale.refund.over_refund_blocked",
            sale_id=sale_id,
            sale_line_id=line.get("sale_line_id"),
            requested_qty=line.get("requested"),
            available_qty=line.get("refundable"),
            result="blocked",
        )


def idempotency_conflict(sale_id: int, kind: str, idempotency_key: str, existing_job_id) -> None:
    metrics.IDEMPOTENCY_CONFLICTS.inc()
    logger.warning(
        "sale.refund.idempotency_conflict",
        sale_id=sale_id,
        job_kind=kind,
        idempotency_key=idempotency_key,
        existing_job_id=str(existing_job_id),
    )


def job_finished(job, duration_s: float | None) -> None:
    """Called once per job reaching a terminal status (in the worker)."""
    result = (
        (job.result or {}).get("outcome", "success")
        if job.status == "succeeded"
        else job.error_code
    )
    metrics.JOBS_FINISHED.labels(job.kind, job.status, job.error_code).inc()
    if job.kind == "sale.paid":
        _paid_finished(job, result, duration_s)
    else:
        _refund_finished(job, result, duration_s)


def _paid_finished(job, result: str, duration_s: float | None) -> None:
    metrics.STOCK_CONSUME.labels(result).inc()
    if duration_s is not None:
        metrics.STOCK_CONSUME_DURATION.observe(duration_s)
    duration_ms = round(duration_s * 1000) if duration_s is not None else None
    # On failure the sale kept its status: that is where it came from.
    from_status = (
        (job.result or {}).get("from_status") if job.status == "succeeded" else job.sale.status
    )
    transition(
        job.sale_id,
        from_status,
        "paid",
        "success" if result in ("success", "idempotent") else result,
        job_id=str(job.pk),
        duration_ms=duration_ms,
    )
    if result == "success":
        r = job.result
        logger.info(
            "sale.paid.stock_consumed",
            entity_type="Sale",
            entity_id=job.sale_id,
            result=result,
            stock_moves_count=r["stock_moves_count"],
            total_quantity=r["total_quantity"],
            duration_ms=duration_ms,
        )
        lines = {}
        for m in r["moves"]:
            lines[m["sale_line_id"]] = lines.get(m["sale_line_id"], 0) + m["quantity"]
        logger.info(
            "consistency_checkpoint",
            checkpoint="stock_consumed_for_sale",
            status="passed",
            entity_type="Sale",
            entity_id=job.sale_id,
            checks={
                "moves_created": r["stock_moves_count"] > 0,
                "all_lines_processed": bool(lines),
            },
            metadata={"lines": len(lines), "total_quantity": r["total_quantity"]},
        )
    elif result not in ("idempotent",):
        logger.warning(
            "sale.paid.stock_consume_failed",
            entity_type="Sale",
            entity_id=job.sale_id,
            result=result,
            error_message=job.error_message,
            duration_ms=duration_ms,
        )


def _refund_finished(job, result: str, duration_s: float | None) -> None:
    refund_type = (job.payload or {}).get("kind", "full")
    metrics.REFUNDS.labels(refund_type, result).inc()
    if duration_s is not None:
        metrics.REFUND_DURATION.observe(duration_s)
    if result == "success":
        r = job.result
        lines = {m["sale_line_id"] for m in r["moves"]}
        metrics.REFUND_LINES.labels("success").inc(len(lines))
        metrics.REFUND_MOVES.labels(refund_type).inc(r["stock_moves_count"])
        logger.info(
            "sale.refund.created",
            refund_type=refund_type,
            refund_id=r["refund_id"],
            sale_id=job.sale_id,
            lines_count=len(lines),
            stock_moves_count=r["stock_moves_count"],
            result=result,
            duration_ms=round(duration_s * 1000) if duration_s is not None else None,
        )
    elif result != "idempotent":
        metrics.REFUND_ROLLBACKS.labels(result).inc()
        if result == "over_refund":
            over_refund_blocked(job.sale_id, (job.result or {}).get("details"))
        else:
            logger.warning(
                "sale.refund.failed",
                refund_type=refund_type,
                sale_id=job.sale_id,
                result=result,
                error_message=job.error_message,
            )
