import hashlib
import secrets

from django.db import models
from django.utils import timezone

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
    def issue(cls, name: str, scopes: list[str] | None = None) -> tuple["ApiToken", str]:
        raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(name=name, token_hash=hash_token(raw), scopes=scopes or [])
        return token, raw

    @classmethod
    def authenticate(cls, raw: str) -> "ApiToken | None":
        return cls.objects.active().filter(token_hash=hash_token(raw)).first()
