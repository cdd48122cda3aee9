import datetime

from django.db import models
from django.db.models import Q
from django.utils import timezone

from stockflow.platform import timezones


class Product(models.Model):
    sku = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=200)

    class Meta:
        db_table = "inventory_product"

    def __str__(self):
        return self.sku


class Location(models.Model):
    code = models.CharField(max_length=64, unique=True)
    # "Expired" is decided by the calendar where the goods are, not the server's.
    timezone = models.CharField(
        max_length=64, default="UTC", validators=[timezones.validate_timezone]
    )

    class Meta:
        db_table = "inventory_location"

    def __str__(self):
        return self.code

    def today(self) -> datetime.date:
        # A bad stored name reads as UTC (logged): never an error for stock reads or jobs.
        return timezone.now().astimezone(timezones.zone(self.timezone)).date()


class Batch(models.Model):
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="batches")
    location = models.ForeignKey(Location, on_delete=models.PROTECT, related_name="batches")
    lot = models.CharField(max_length=64)
    expires_on = models.DateField(null=True, blank=True)  # null: never expires

    class Meta:
        db_table = "inventory_batch"
        verbose_name_plural = "batches"
        constraints = [
            models.UniqueConstraint(fields=["product", "location", "lot"], name="batch_unique_lot")
        ]
        indexes = [models.Index(fields=["product", "location", "expires_on", "id"])]

    def __str__(self):
        return f"{self.product_id}/{self.lot}"

    def is_expired_on(self, day: datetime.date) -> bool:
        return self.expires_on is not None and self.expires_on < day


class StockOnHand(models.Model):
    """One row per batch; the row that is locked while stock moves."""

    batch = models.OneToOneField(Batch, on_delete=models.PROTECT, related_name="on_hand")
    quantity = models.BigIntegerField(default=0)  # 64-bit: totals may pass 2^31

    class Meta:
        db_table = "inventory_stockonhand"
        verbose_name_plural = "stock on hand"
        constraints = [
            models.CheckConstraint(condition=Q(quantity__gte=0), name="on_hand_not_negative")
        ]


class StockMove(models.Model):
    """Append-only ledger. For every batch, on-hand == sum(quantity) of its moves."""

    class Kind(models.TextChoices):
        RECEIPT = "RECEIPT"
        SALE_OUT = "SALE_OUT"
        REFUND_IN = "REFUND_IN"
        ADJUST = "ADJUST"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    batch = models.ForeignKey(Batch, on_delete=models.PROTECT, related_name="moves")
    quantity = models.BigIntegerField()  # signed: out is negative
    sale_line = models.ForeignKey(
        "stock.SaleLine", null=True, blank=True, on_delete=models.PROTECT, related_name="moves"
    )
    refund_line = models.ForeignKey(
        "stock.RefundLine", null=True, blank=True, on_delete=models.PROTECT, related_name="moves"
    )
    job = models.ForeignKey(
        "stock.Job", null=True, blank=True, on_delete=models.PROTECT, related_name="moves"
    )
    request_id = models.CharField(max_length=128, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    # A receipt's Idempotency-Key (NULL: none; other kinds never have one): a client's
    # retry answers with this move instead of counting the stock again.
    idempotency_key = models.CharField(max_length=128, null=True, blank=True)  # noqa: DJ001

    class Meta:
        db_table = "inventory_stockmove"
        constraints = [
            # Two copies of one receipt racing: one inserts, the other rolls back.
            models.UniqueConstraint(
                fields=["idempotency_key"],
                condition=Q(kind="RECEIPT", idempotency_key__isnull=False),
                name="receipt_idempotency_key_once",
            ),
            # A job applied twice would need a second row here: the database refuses it.
            models.UniqueConstraint(
                fields=["sale_line", "batch"],
                condition=Q(kind="SALE_OUT"),
                name="sale_out_once_per_line_batch",
            ),
            models.UniqueConstraint(
                fields=["refund_line", "batch"],
                condition=Q(kind="REFUND_IN"),
                name="refund_in_once_per_line_batch",
            ),
            models.CheckConstraint(
                condition=(
                    Q(kind="SALE_OUT", quantity__lt=0, sale_line__isnull=False)
                    | Q(kind="REFUND_IN", quantity__gt=0, refund_line__isnull=False)
                    | Q(kind="RECEIPT", quantity__gt=0)
                    | Q(kind="ADJUST")
                ),
                name="move_sign_matches_kind",
            ),
        ]
