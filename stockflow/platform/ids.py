"""Ids from outside (URLs, broker messages) checked before they reach a query: bigint
primary keys outside that range, or job ids that are not UUIDs, cannot exist."""

import uuid

BIGINT_MAX = 2**63 - 1


def plausible(pk) -> bool:
    return isinstance(pk, int) and 0 < pk <= BIGINT_MAX


def as_uuid(value) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None
