import django.db.models.deletion
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # CONCURRENTLY: building the index does not block the accepts writing jobs meanwhile.
    atomic = False

    dependencies = [("stock", "0004_job_request_id_index")]

    operations = [
        migrations.AddField(
            model_name="job",
            name="location",
            field=models.ForeignKey(
                db_constraint=False,
                null=True,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="+",
                to="stock.location",
            ),
        ),
        # Jobs written before: their sale's location (a job's location is its sale's).
        migrations.RunSQL(
            "UPDATE jobs_job j SET location_id = s.location_id FROM sales_sale s"
            " WHERE s.id = j.sale_id AND j.location_id IS NULL",
            migrations.RunSQL.noop,
        ),
        migrations.AlterField(
            model_name="job",
            name="location",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.DO_NOTHING,
                related_name="+",
                to="stock.location",
            ),
        ),
        AddIndexConcurrently(
            model_name="job",
            index=models.Index(
                condition=models.Q(("status", "queued")),
                fields=["kind", "location", "created_at"],
                name="job_queued_location",
            ),
        ),
    ]
