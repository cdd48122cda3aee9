import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone


class Job(models.Model):
    """The outbox: the durable record of every async request. The broker only carries its id."""

    class Kind(models.TextChoices):
        SALE_PAID = "sale.paid"
        SALE_REFUND = "sale.refund"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED)
    UNFINISHED = (Status.QUEUED, Status.RUNNING)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    kind = models.CharField(max_length=32, choices=Kind.choices)
    sale = models.ForeignKey("stock.Sale", on_delete=models.PROTECT, related_name="jobs")
    # The sale's location, copied when the job is written: the job's queue (JOB_ROUTING)
    # and, sharded, its batch. No foreign key of its own (the sale's has it checked): one
    # check fewer on the accept path.
    location = models.ForeignKey(
        "stock.Location", on_delete=models.DO_NOTHING, related_name="+", db_constraint=False
    )
    payload = models.JSONField(default=dict)
    # NULL, not "": a request without a key never collides with another (unique constraint).
    idempotency_key = models.CharField(max_length=128, null=True, blank=True)  # noqa: DJ001
    fingerprint = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    result = models.JSONField(null=True, blank=True)
    error_code = models.CharField(max_length=32, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    request_id = models.CharField(max_length=128, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # When the reconciler may assume the broker message (or the worker) is gone.
    lease_expires_at = models.DateTimeField()

    class Meta:
        db_table = "jobs_job"
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "sale", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="job_idempotency_key_once",
            ),
            # At most one unfinished PAID job per sale: duplicates return the same job.
            models.UniqueConstraint(
                fields=["sale"],
                condition=Q(kind="sale.paid", status__in=["queued", "running"]),
                name="job_one_active_paid_per_sale",
            ),
        ]
        indexes = [
            # The reconciler's and the backlog gauges' one query.
            models.Index(
                fields=["status", "lease_expires_at"],
                condition=Q(status__in=["queued", "running"]),
                name="job_unfinished_lease",
            ),
            models.Index(fields=["status", "created_at"], name="job_status_created"),
            # A sharded worker's batch: the oldest queued jobs of one kind at one location.
            models.Index(
                fields=["kind", "location", "created_at"],
                condition=Q(status="queued"),
                name="job_queued_location",
            ),
            # Operators search jobs by request id (GET /api/jobs?request_id=, the console).
            models.Index(fields=["request_id"], name="job_request_id"),
            models.Index(
                fields=["kind", "finished_at"], name="job_kind_finished"
            ),  # console windows
        ]

    def __str__(self):
        return f"{self.kind} {self.id}"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL
