"""Domain events and their metrics: the one place that turns outcomes of the sales
flows into log events (seed catalogue names) and counters."""

import structlog

from stockflow.observability import metrics
from stockflow.platform.errors import ErrorCode

from .models import Job, Refund, Sale
from .results import JobResult, Outcome, PaymentResult, stored

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
    if code == ErrorCode.OVER_REFUND:
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


def batch_settled(size: int, duration_s: float) -> None:
    """One worker transaction settled `size` jobs (each also reported by job_finished)."""
    metrics.JOB_BATCH_SIZE.observe(size)
    metrics.JOB_BATCH_DURATION.observe(duration_s)


def job_finished(job: Job, duration_s: float | None, result: JobResult | None = None) -> None:
    """Called once per job reaching a terminal status (in the worker). `result` is what
    the service returned; without it, the typed view of what the job stored."""
    if result is None:
        result = stored(job)
    metrics.JOBS_FINISHED.labels(job.kind, job.status, job.error_code).inc()
    if job.kind == Job.Kind.SALE_PAID:
        _paid_finished(job, result, duration_s)
    else:
        _refund_finished(job, result, duration_s)


def _paid_finished(job: Job, result: JobResult, duration_s: float | None) -> None:
    outcome = result.outcome
    metrics.STOCK_CONSUME.labels(outcome).inc()
    if duration_s is not None:
        metrics.STOCK_CONSUME_DURATION.observe(duration_s)
    duration_ms = round(duration_s * 1000) if duration_s is not None else None
    # On failure the sale kept its status: that is where it came from.
    from_status = result.from_status if isinstance(result, PaymentResult) else job.sale.status
    transition(
        job.sale_id,
        from_status,
        Sale.Status.PAID,
        Outcome.SUCCESS if isinstance(result, PaymentResult) else outcome,
        job_id=str(job.pk),
        duration_ms=duration_ms,
    )
    if outcome == Outcome.SUCCESS:
        logger.info(
            "sale.paid.stock_consumed",
            entity_type="Sale",
            entity_id=job.sale_id,
            result=outcome,
            stock_moves_count=result.stock_moves_count,
            total_quantity=result.total_quantity,
            duration_ms=duration_ms,
        )
        lines = {m.sale_line_id for m in result.moves}
        logger.info(
            "consistency_checkpoint",
            checkpoint="stock_consumed_for_sale",
            status="passed",
            entity_type="Sale",
            entity_id=job.sale_id,
            checks={
                "moves_created": result.stock_moves_count > 0,
                "all_lines_processed": bool(lines),
            },
            metadata={"lines": len(lines), "total_quantity": result.total_quantity},
        )
    elif outcome != Outcome.IDEMPOTENT:
        logger.warning(
            "sale.paid.stock_consume_failed",
            entity_type="Sale",
            entity_id=job.sale_id,
            result=outcome,
            error_message=job.error_message,
            duration_ms=duration_ms,
        )


def _refund_finished(job: Job, result: JobResult, duration_s: float | None) -> None:
    refund_type = (job.payload or {}).get("kind", Refund.Kind.FULL)
    outcome = result.outcome
    metrics.REFUNDS.labels(refund_type, outcome).inc()
    if duration_s is not None:
        metrics.REFUND_DURATION.observe(duration_s)
    if outcome == Outcome.SUCCESS:
        lines = {m.sale_line_id for m in result.moves}
        metrics.REFUND_LINES.labels(Outcome.SUCCESS).inc(len(lines))
        metrics.REFUND_MOVES.labels(refund_type).inc(result.stock_moves_count)
        logger.info(
            "sale.refund.created",
            refund_type=refund_type,
            refund_id=result.refund_id,
            sale_id=job.sale_id,
            lines_count=len(lines),
            stock_moves_count=result.stock_moves_count,
            result=outcome,
            duration_ms=round(duration_s * 1000) if duration_s is not None else None,
        )
    elif outcome != Outcome.IDEMPOTENT:
        metrics.REFUND_ROLLBACKS.labels(outcome).inc()
        if outcome == ErrorCode.OVER_REFUND:
            over_refund_blocked(job.sale_id, result.details)
        else:
            logger.warning(
                "sale.refund.failed",
                refund_type=refund_type,
                sale_id=job.sale_id,
                result=outcome,
                error_message=job.error_message,
            )
