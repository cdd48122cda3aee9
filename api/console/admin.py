"""Django admin for every stockflow model.

What the services write under row locks — the ledger (StockMove), on-hand, jobs,
sales, refunds and their lines — is read-only here: an edit by hand would bypass
the locks and break an invariant (on-hand == Σ moves, a paid sale's moves == its
lines, refunds ≤ sold), i.e. turn A1 red. Stock comes in through POST /api/receipts,
sales move through the API. Products, locations and a batch's expiry date can be
corrected here. API tokens: the hash is never shown; issue them with
`manage.py create_api_token` (the raw token is shown once), revoke them here. The
audit trail is append-only (a database trigger) and read-only here; leads too.
"""

from django import forms
from django.contrib import admin, messages
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from stockflow.accounts import scopes as token_scopes
from stockflow.accounts.models import ApiToken, AuditEntry
from stockflow.leads.models import Lead
from stockflow.stock.models import (
    Batch,
    Job,
    Location,
    Product,
    Refund,
    RefundLine,
    Sale,
    SaleLine,
    StockMove,
    StockOnHand,
)

admin.site.site_header = "stockflow admin"
admin.site.site_title = "stockflow admin"
admin.site.index_title = "Records (ledger, jobs, sales and refunds are read-only)"
admin.site.site_url = "/console/"  # "View site" opens the ops console


class ReadOnlyMixin:
    """View only: no add, no change, no delete — for anyone, superusers included."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyAdmin(ReadOnlyMixin, admin.ModelAdmin):
    show_full_result_count = False  # no COUNT(*) over the whole table on every list page


class ReadOnlyInline(ReadOnlyMixin, admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = True


def _console_job_link(job_id):
    if not job_id:
        return "—"
    return format_html('<a href="{}">{}</a>', reverse("console:job", args=[job_id]), job_id)


# --- inventory --------------------------------------------------------------------


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ("sku", "name")
    search_fields = ("sku", "name")
    ordering = ("sku",)

    def has_delete_permission(self, request, obj=None):
        return False  # PROTECTed by batches and sale lines anyway


@admin.register(Location)
class LocationAdmin(admin.ModelAdmin):
    list_display = ("code", "timezone")
    search_fields = ("code",)
    ordering = ("code",)

    def has_delete_permission(self, request, obj=None):
        return False


class StockOnHandInline(ReadOnlyInline):
    model = StockOnHand
    fields = ("quantity",)
    show_change_link = False


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    list_display = ("id", "product", "location", "lot", "expires_on", "on_hand_quantity")
    list_filter = ("location", "expires_on")
    search_fields = ("lot", "product__sku")
    list_select_related = ("product", "location", "on_hand")
    ordering = ("expires_on", "product__sku", "lot")
    readonly_fields = ("product", "location", "lot")  # only the expiry date can be corrected
    inlines = (StockOnHandInline,)
    show_full_result_count = False

    @admin.display(description="on hand", ordering="on_hand__quantity")
    def on_hand_quantity(self, obj):
        return obj.on_hand.quantity if hasattr(obj, "on_hand") else None

    def has_add_permission(self, request):
        return False  # stock arrives through POST /api/receipts (batch, on-hand row and RECEIPT move together)

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(StockOnHand)
class StockOnHandAdmin(ReadOnlyAdmin):
    list_display = ("batch_id", "sku", "lot", "location", "expires_on", "quantity")
    list_select_related = ("batch__product", "batch__location")
    search_fields = ("batch__lot", "batch__product__sku")
    ordering = ("batch__expires_on", "batch_id")

    @admin.display(ordering="batch__product__sku")
    def sku(self, obj):
        return obj.batch.product.sku

    @admin.display(ordering="batch__lot")
    def lot(self, obj):
        return obj.batch.lot

    @admin.display(ordering="batch__location__code")
    def location(self, obj):
        return obj.batch.location.code

    @admin.display(ordering="batch__expires_on")
    def expires_on(self, obj):
        return obj.batch.expires_on


@admin.register(StockMove)
class StockMoveAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "kind",
        "batch_label",
        "quantity",
        "sale_line_id",
        "refund_line_id",
        "job_link",
        "request_id",
        "created_at",
    )
    list_filter = ("kind",)
    search_fields = ("request_id", "batch__lot", "batch__product__sku")
    list_select_related = ("batch__product",)
    ordering = ("-id",)

    @admin.display(description="batch")
    def batch_label(self, obj):
        return f"{obj.batch.product.sku} / {obj.batch.lot}"

    @admin.display(description="job")
    def job_link(self, obj):
        return _console_job_link(obj.job_id)


# --- jobs -------------------------------------------------------------------------


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "kind",
        "sale",
        "status",
        "attempts",
        "error_code",
        "request_id",
        "created_at",
        "finished_at",
    )
    list_filter = ("status", "kind", "error_code")
    search_fields = ("request_id", "sale__number", "idempotency_key")
    list_select_related = ("sale",)
    ordering = ("-created_at",)
    readonly_fields = ("console",)

    @admin.display(description="ops console")
    def console(self, obj):
        return _console_job_link(obj.pk)


# --- sales ------------------------------------------------------------------------


class SaleLineInline(ReadOnlyInline):
    model = SaleLine
    fields = ("product", "quantity", "unit_price")


class RefundLineInline(ReadOnlyInline):
    model = RefundLine
    fields = ("sale_line", "quantity")
    show_change_link = False


@admin.register(Sale)
class SaleAdmin(ReadOnlyAdmin):
    list_display = ("number", "location", "status", "created_at", "paid_at")
    list_filter = ("status", "location")
    search_fields = ("number",)
    list_select_related = ("location",)
    ordering = ("-created_at",)
    inlines = (SaleLineInline,)


@admin.register(SaleLine)
class SaleLineAdmin(ReadOnlyAdmin):
    list_display = ("id", "sale", "product", "quantity", "unit_price")
    search_fields = ("sale__number", "product__sku")
    list_select_related = ("sale", "product")
    ordering = ("-id",)


@admin.register(Refund)
class RefundAdmin(ReadOnlyAdmin):
    list_display = ("id", "sale", "kind", "idempotency_key", "job_link", "created_at")
    list_filter = ("kind",)
    search_fields = ("sale__number", "idempotency_key")
    list_select_related = ("sale",)
    ordering = ("-created_at",)
    inlines = (RefundLineInline,)

    @admin.display(description="job")
    def job_link(self, obj):
        return _console_job_link(obj.job_id)


@admin.register(RefundLine)
class RefundLineAdmin(ReadOnlyAdmin):
    list_display = ("id", "refund", "sale_line", "quantity")
    search_fields = ("refund__sale__number",)
    list_select_related = ("refund", "sale_line")
    ordering = ("-id",)


# --- API tokens -------------------------------------------------------------------


@admin.action(description="Revoke selected tokens", permissions=["change"])
def revoke_tokens(modeladmin, request, queryset):
    n = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
    modeladmin.message_user(request, f"Revoked {n} token(s).", messages.SUCCESS)


class ApiTokenForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=[(s, s) for s in token_scopes.ALL],
        widget=forms.CheckboxSelectMultiple,
        required=False,
    )

    class Meta:
        model = ApiToken
        fields = ("name", "scopes")


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    # token_hash is never displayed, listed, searched or editable.
    form = ApiTokenForm
    fields = ("name", "scopes", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("created_at", "last_used_at", "revoked_at")
    list_display = ("name", "scopes", "created_at", "last_used_at", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("name",)
    ordering = ("-created_at",)
    actions = (revoke_tokens,)

    def has_add_permission(self, request):
        return False  # `manage.py create_api_token NAME` shows the raw token once

    def has_delete_permission(self, request, obj=None):
        return False  # revoke instead: the token's name stays for the audit trail


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    """Append-only in the database too (a trigger refuses UPDATE and DELETE)."""

    list_display = (
        "created_at",
        "token_name",
        "action",
        "sale_id",
        "outcome",
        "status_code",
        "request_id",
        "job_link",
    )
    list_filter = ("action", "outcome", "status_code")
    search_fields = ("request_id", "token_name")
    ordering = ("-created_at",)

    @admin.display(description="job")
    def job_link(self, obj):
        return _console_job_link(obj.job_id)


# --- leads --------------------------------------------------------------------------


@admin.register(Lead)
class LeadAdmin(ReadOnlyAdmin):
    """Contact-form submissions (personal data: shown to staff here, nowhere else)."""

    list_display = ("created_at", "name", "email", "phone", "source")
    list_filter = ("source",)
    search_fields = ("email", "name")
    ordering = ("-created_at",)
    exclude = ("client_hash",)
