from django.db import migrations, models


class Migration(migrations.Migration):
    """Receipts take an optional Idempotency-Key, kept on their RECEIPT move: a retried
    receipt answers with the first instead of counting the stock twice. The column is
    nullable (no rewrite of the ledger, whose triggers refuse UPDATE), and the unique index
    is partial: only keyed receipts are in it."""

    dependencies = [
        ("stock", "0002_quantities_64bit"),
    ]

    operations = [
        # Building the index reads the whole ledger: longer, maybe, than the statement_timeout
        # every connection has. Lifted for this migration's transaction only.
        migrations.RunSQL("SET LOCAL statement_timeout = 0", migrations.RunSQL.noop),
        migrations.AddField(
            model_name="stockmove",
            name="idempotency_key",
            field=models.CharField(blank=True, max_length=128, null=True),
        ),
        migrations.AddConstraint(
            model_name="stockmove",
            constraint=models.UniqueConstraint(
                condition=models.Q(("idempotency_key__isnull", False), ("kind", "RECEIPT")),
                fields=("idempotency_key",),
                name="receipt_idempotency_key_once",
            ),
        ),
    ]
