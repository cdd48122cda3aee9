from django.db import models
from django.utils import timezone


class Lead(models.Model):
    """A contact-form submission. Personal data lives here and nowhere else
    (never in logs, metrics or Sentry)."""

    name = models.CharField(max_length=200)
    email = models.EmailField(max_length=254)
    phone = models.CharField(max_length=32, blank=True, default="")
    message = models.TextField(max_length=5000, blank=True, default="")
    source = models.CharField(max_length=64, blank=True, default="")
    # Keyed hash of the client address: lets ops correlate abuse without storing the IP.
    client_hash = models.CharField(max_length=16)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
