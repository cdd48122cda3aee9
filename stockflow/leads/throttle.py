"""Per-client throttling of the public lead form, counted in Redis so that every
web process shares one budget. Fixed windows: a burst budget per minute and a
budget per hour."""

import hashlib
import hmac
import ipaddress
import time
from dataclasses import dataclass

from django.conf import settings

from stockflow.platform import redis_client

# (scope, window seconds, setting name of the limit)
WINDOWS = (("minute", 60, "LEADS_PER_MINUTE"), ("hour", 3600, "LEADS_PER_HOUR"))


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    scope: str = ""
    retry_after: int = 0


def client_ip(request) -> str:
    """REMOTE_ADDR, unless it is a trusted proxy: then the right-most X-Forwarded-For
    entry that is not itself a trusted proxy (clients can forge the left part)."""
    remote = request.META.get("REMOTE_ADDR", "")
    if not _trusted(remote):
        return remote
    hops = [h.strip() for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop):
            return hop
    return remote


def _trusted(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in settings.TRUSTED_PROXIES)


def budget_subject(ip: str) -> str:
    """Whom a budget belongs to: an IPv4 address, or an IPv6 client's /64. One IPv6
    subscriber or host usually holds a whole /64, so counting per address would give
    it 2^64 budgets. An IPv4-mapped IPv6 address counts as its IPv4 address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip  # not an IP (e.g. a unix socket peer): counted as it is
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))  # zone id dropped
    return str(address)


def client_hash(ip: str) -> str:
    return hmac.new(settings.SECRET_KEY.encode(), ip.encode(), hashlib.sha256).hexdigest()[:16]


def window_keys(client: str, now: int) -> list[tuple[str, int, str]]:
    """(scope, window seconds, Redis key) of the fixed window each budget is counted in
    at `now`: the key changes when the window does, so an old count simply expires."""
    return [
        (scope, window, f"stockflow:throttle:leads:{scope}:{client}:{now // window}")
        for scope, window, _ in WINDOWS
    ]


def judge(counts: list[int], limits: list[int], now: int) -> Verdict:
    """The verdict for these counts (one per window, in WINDOWS order): the first window
    over its limit refuses, with the seconds left until that window ends."""
    for (scope, window, _), count, limit in zip(WINDOWS, counts, limits, strict=True):
        if count > limit:
            return Verdict(False, scope, window - now % window)
    return Verdict(True)


def hit(client: str) -> Verdict:
    """Count one request for this client in every window; refuse if any is over budget."""
    now = int(time.time())
    pipe = redis_client.client().pipeline()
    for _, window, key in window_keys(client, now):
        pipe.incr(key)
        pipe.expire(key, window + 5)
    counts = pipe.execute()[::2]
    return judge(counts, [getattr(settings, setting) for _, _, setting in WINDOWS], now)
