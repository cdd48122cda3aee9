import hashlib
import secrets

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
        # Every API request runs this: SQL, not the ORM's query compiler.
        found = sql.fetch(
            cls,
            f"SELECT {sql.columns(cls, 't')} FROM {cls._meta.db_table} t "
            "WHERE t.token_hash = %s AND t.revoked_at IS NULL",
            [hash_token(raw)],
        )
        return found[0] if found else None


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
