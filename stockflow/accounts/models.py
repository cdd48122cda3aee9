import hashlib
import secrets
import threading
import time

from django.conf import settings
from django.db import models
from django.utils import timezone

from stockflow.platform import sql

from . import scopes as scopes_module

TOKEN_PREFIX = "sf_"


def hash_token(raw: str) -> str:
    # Tokens are 256-bit random: a fast hash is enough, no password-style stretching needed.
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiTokenQuerySet(models.QuerySet):
    def active(self):
        return self.filter(revoked_at__isnull=True)

    def revoke(self) -> int:
        """Revoke these tokens: this process stops accepting them at once, others within
        API_TOKEN_CACHE_SECONDS."""
        revoked = self.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        forget_cached_tokens()
        return revoked


# token hash -> (monotonic deadline, ApiToken). Verified tokens only: an unknown or
# revoked token is looked up every time, so a new token works at once.
_CACHE: dict[str, tuple[float, "ApiToken"]] = {}
_CACHE_MAX = 1024  # a bound, not a tuning knob: past it the cache starts over
_CACHE_LOCK = threading.Lock()


def forget_cached_tokens() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


class ApiToken(models.Model):
    """A bearer token. Only its hash is stored; the raw value is shown once."""

    name = models.CharField(max_length=100)
    token_hash = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    def __str__(self):
        return self.name

    @classmethod
    def issue(
        cls, name: str, scopes: list[str] | tuple[str, ...] = scopes_module.ALL
    ) -> tuple["ApiToken", str]:
        unknown = set(scopes) - set(scopes_module.ALL)
        if unknown:
            raise ValueError(f"unknown scopes: {', '.join(sorted(unknown))}")
        raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(name=name, token_hash=hash_token(raw), scopes=list(scopes))
        return token, raw

    def allows(self, scope: str) -> bool:
        return scope in self.scopes

    @classmethod
    def authenticate(cls, raw: str) -> "ApiToken | None":
        """The active token, or None. A verified token is kept in-process for
        API_TOKEN_CACHE_SECONDS (0: always ask the database): one query less per request,
        at the price of a revocation taking that long to reach other processes."""
        token_hash = hash_token(raw)
        now = time.monotonic()
        cached = _CACHE.get(token_hash)
        if cached is not None and cached[0] > now:
            return cached[1]
        # Every API request without a fresh cache entry runs this: SQL, not the ORM's compiler.
        found = sql.fetch(
            cls,
            f"SELECT {sql.columns(cls, 't')} FROM {cls._meta.db_table} t "
            "WHERE t.token_hash = %s AND t.revoked_at IS NULL",
            [token_hash],
        )
        token = found[0] if found else None
        ttl = settings.API_TOKEN_CACHE_SECONDS
        with _CACHE_LOCK:
            if token is None or ttl <= 0:
                _CACHE.pop(token_hash, None)
            else:
                if len(_CACHE) >= _CACHE_MAX:
                    _CACHE.clear()
                _CACHE[token_hash] = (now + ttl, token)
        return token


class AuditEntry(models.Model):
    """Append-only: who asked for which transition or refund, and what came of it.
    A database trigger refuses UPDATE and DELETE. No PII beyond the token's name."""

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    token_name = models.CharField(max_length=100)
    action = models.CharField(max_length=32)  # sale.transition, sale.refund
    sale_id = models.BigIntegerField(null=True)
    request_id = models.CharField(max_length=128)
    outcome = models.CharField(max_length=32)  # accepted, success, or an error code
    status_code = models.PositiveSmallIntegerField()
    job_id = models.UUIDField(null=True)

    class Meta:
        verbose_name_plural = "audit entries"
        indexes = [models.Index(fields=["sale_id", "created_at"])]
