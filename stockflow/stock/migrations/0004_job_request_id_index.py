from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    # CONCURRENTLY: building the index does not block the accepts writing jobs meanwhile.
    atomic = False

    dependencies = [("stock", "0003_receipt_idempotency")]

    operations = [
        AddIndexConcurrently(
            model_name="job",
            index=models.Index(fields=["request_id"], name="job_request_id"),
        ),
    ]
