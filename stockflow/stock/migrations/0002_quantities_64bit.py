"""Quantities are 64-bit (a batch's on-hand could pass 2^31 and fail its receipt with a
DataError); location time zones are validated against zoneinfo; the append-only tables
(the ledger and the audit trail) refuse TRUNCATE as they refuse UPDATE and DELETE.

The type change rewrites the four tables under an exclusive lock: minutes on a large
ledger, so run it in a maintenance window."""

from django.db import migrations, models

import stockflow.platform.timezones

APPEND_ONLY_TABLES = ("core_auditentry", "inventory_stockmove")

# TRUNCATE skips row triggers, so it needs a statement trigger of its own. Emptying these
# tables on purpose (a test database's flush) takes `SET stockflow.allow_truncate = on`
# in that session first.
REFUSE_TRUNCATE = """
CREATE OR REPLACE FUNCTION stockflow_refuse_truncate() RETURNS trigger AS $$
BEGIN
    IF current_setting('stockflow.allow_truncate', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'SET stockflow.allow_truncate = on in this session to empty it on purpose';
END;
$$ LANGUAGE plpgsql;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("stock", "0001_initial"),
        ("core", "0003_append_only_triggers"),  # core_auditentry and its UPDATE/DELETE trigger
    ]

    operations = [
        # The rewrite may take longer than the statement_timeout every connection has: lift
        # it for this migration's transaction only.
        migrations.RunSQL("SET LOCAL statement_timeout = 0", migrations.RunSQL.noop),
        migrations.AlterField(
            model_name="stockonhand",
            name="quantity",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AlterField(
            model_name="stockmove",
            name="quantity",
            field=models.BigIntegerField(),
        ),
        migrations.AlterField(
            model_name="saleline",
            name="quantity",
            field=models.PositiveBigIntegerField(),
        ),
        migrations.AlterField(
            model_name="refundline",
            name="quantity",
            field=models.PositiveBigIntegerField(),
        ),
        migrations.AlterField(
            model_name="location",
            name="timezone",
            field=models.CharField(
                default="UTC",
                max_length=64,
                validators=[stockflow.platform.timezones.validate_timezone],
            ),
        ),
        migrations.RunSQL(REFUSE_TRUNCATE, "DROP FUNCTION IF EXISTS stockflow_refuse_truncate();"),
        *[
            migrations.RunSQL(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION stockflow_refuse_truncate();",
                f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table};",
            )
            for table in APPEND_ONLY_TABLES
        ],
    ]
