"""The ledger and the audit trail are append-only: PostgreSQL refuses UPDATE and DELETE."""
from django.db import migrations

FUNCTION = """
CREATE OR REPLACE FUNCTION stockflow_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
"""
TABLES = ("core_auditentry", "inventory_stockmove")


class Migration(migrations.Migration):
    dependencies = [("core", "0002_audit_entry"), ("stock", "0001_initial")]

    operations = [
        migrations.RunSQL(FUNCTION, "DROP FUNCTION IF EXISTS stockflow_append_only();"),
        *[
            migrations.RunSQL(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION stockflow_append_only();",
                f"DROP TRIGGER IF EXISTS {table}_append_only ON {table};",
            )
            for table in TABLES
        ],
    ]
