"""Primary keys are PostgreSQL bigints: an id outside that range cannot exist."""
BIGINT_MAX = 2**63 - 1


def plausible(pk) -> bool:
    return isinstance(pk, int) and 0 < pk <= BIGINT_MAX
