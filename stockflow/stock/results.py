"""What a job ended with, typed: the stock services return these, the outbox stores them
as the job's result JSON, the domain events read them.

The JSON keys are part of the API (GET /api/jobs/{id} shows `result` as stored): a key
an outcome does not carry (`moves` of an idempotent job, …) is left out, never null.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .models import Job


class Outcome(StrEnum):
    """How a request or a job ended well; failures are ErrorCode values."""

    ACCEPTED = "accepted"  # a request became a job
    SUCCESS = "success"
    IDEMPOTENT = "idempotent"  # an earlier delivery or request already had the effect


@dataclass(frozen=True)
class Moved:
    """One stock move a job wrote, as its result reports it."""

    sale_line_id: int
    batch_id: int
    quantity: int

    def as_json(self) -> dict:
        return {
            "sale_line_id": self.sale_line_id,
            "batch_id": self.batch_id,
            "quantity": self.quantity,
        }


def _moves_json(moves: tuple[Moved, ...]) -> list[dict]:
    return [m.as_json() for m in moves]


def _moves(items: list[dict] | None) -> tuple[Moved, ...]:
    return tuple(Moved(m["sale_line_id"], m["batch_id"], m["quantity"]) for m in items or ())


@dataclass(frozen=True)
class PaymentResult:
    """sale.paid: `success` (moves written) or `idempotent` (paid by an earlier delivery)."""

    outcome: Outcome
    from_status: str
    stock_moves_count: int
    moves: tuple[Moved, ...] = ()  # success only

    @property
    def total_quantity(self) -> int:
        return sum(m.quantity for m in self.moves)

    def as_json(self) -> dict:
        out = {
            "outcome": self.outcome.value,
            "from_status": self.from_status,
            "stock_moves_count": self.stock_moves_count,
        }
        if self.outcome == Outcome.SUCCESS:
            out["total_quantity"] = self.total_quantity
            out["moves"] = _moves_json(self.moves)
        return out

    @classmethod
    def from_json(cls, data: dict) -> PaymentResult:
        return cls(
            Outcome(data["outcome"]),
            data["from_status"],
            data["stock_moves_count"],
            _moves(data.get("moves")),
        )


@dataclass(frozen=True)
class RefundResult:
    """sale.refund: `success` (refund and moves written) or `idempotent` (this key's
    refund exists already)."""

    outcome: Outcome
    refund_id: int
    refund_kind: str | None = None  # success only, as are the fields below
    sale_status: str | None = None
    moves: tuple[Moved, ...] = ()

    @property
    def stock_moves_count(self) -> int:
        return len(self.moves)

    @property
    def total_quantity(self) -> int:
        return sum(m.quantity for m in self.moves)

    def as_json(self) -> dict:
        out = {"outcome": self.outcome.value, "refund_id": self.refund_id}
        if self.outcome == Outcome.SUCCESS:
            out["refund_kind"] = self.refund_kind
            out["sale_status"] = self.sale_status
            out["stock_moves_count"] = self.stock_moves_count
            out["total_quantity"] = self.total_quantity
            out["moves"] = _moves_json(self.moves)
        return out

    @classmethod
    def from_json(cls, data: dict) -> RefundResult:
        return cls(
            Outcome(data["outcome"]),
            data["refund_id"],
            data.get("refund_kind"),
            data.get("sale_status"),
            _moves(data.get("moves")),
        )


@dataclass(frozen=True)
class Failure:
    """A job that ended `failed`: its error code is its outcome."""

    outcome: str  # an ErrorCode value
    details: list | dict | None = None

    def as_json(self) -> dict | None:
        return {"details": self.details} if self.details else None


JobResult = PaymentResult | RefundResult | Failure


def stored(job: Job) -> JobResult:
    """The typed view of a finished job's stored result: the one place that reads
    `job.result` keys."""
    if job.status != Job.Status.SUCCEEDED:
        return Failure(job.error_code, (job.result or {}).get("details"))
    if job.kind == Job.Kind.SALE_PAID:
        return PaymentResult.from_json(job.result)
    return RefundResult.from_json(job.result)
