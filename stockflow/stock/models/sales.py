from django.db import models
from django.db.models import Q
from django.utils import timezone


class Sale(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft"
        PENDING = "pending"
        PAID = "paid"
        PARTIALLY_REFUNDED = "partially_refunded"
        REFUNDED = "refunded"
        CANCELLED = "cancelled"

    number = models.CharField(max_length=64, unique=True)
    location = models.ForeignKey("stock.Location", on_delete=models.PROTECT)
    status = models.CharField(max_length=24, choices=Status.choices, default=Status.DRAFT)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "sales_sale"

    def __str__(self):
        return self.number


class SaleLine(models.Model):
    sale = models.ForeignKey(Sale, on_delete=models.PROTECT, related_name="lines")
    product = models.ForeignKey("stock.Product", on_delete=models.PROTECT)
    quantity = models.PositiveBigIntegerField()
    unit_price = models.DecimalField(max_digits=12, decimal_places=2)

    class Meta:
        db_table = "sales_saleline"
        constraints = [
            models.CheckConstraint(condition=Q(quantity__gt=0), name="sale_line_qty_pos")
        ]
        ordering = ["id"]


class Refund(models.Model):
    class Kind(models.TextChoices):
        FULL = "full"
        PARTIAL = "partial"

    sale = models.ForeignKey(Sale, on_delete=models.PROTECT, related_name="refunds")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    idempotency_key = models.CharField(max_length=128)
    job = models.OneToOneField(
        "stock.Job", null=True, on_delete=models.PROTECT, related_name="refund"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "sales_refund"
        constraints = [
            models.UniqueConstraint(
                fields=["sale", "idempotency_key"], name="refund_key_once_per_sale"
            )
        ]


class RefundLine(models.Model):
    refund = models.ForeignKey(Refund, on_delete=models.PROTECT, related_name="lines")
    sale_line = models.ForeignKey(SaleLine, on_delete=models.PROTECT, related_name="refund_lines")
    quantity = models.PositiveBigIntegerField()

    class Meta:
        db_table = "sales_refundline"
        constraints = [
            models.CheckConstraint(condition=Q(quantity__gt=0), name="refund_line_qty_pos"),
            models.UniqueConstraint(fields=["refund", "sale_line"], name="refund_line_once"),
        ]
