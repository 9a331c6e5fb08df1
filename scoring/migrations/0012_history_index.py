"""An index for a deployment's history (scoring.record.history): its entries are found by
the deployment id in auditlog's additional_data, newest first. Without it the model page
scanned the whole log: 133 ms at 200,000 entries (README, "The record of changes")."""

from django.db import migrations, models
from django.db.models import F
from django.db.models.fields.json import KeyTransform

HISTORY_INDEX = models.Index(
    KeyTransform("deployment", "additional_data"),
    F("timestamp").desc(),
    name="logentry_deployment_history",
)


def add_index(apps, schema_editor):
    schema_editor.add_index(apps.get_model("auditlog", "LogEntry"), HISTORY_INDEX)


def remove_index(apps, schema_editor):
    schema_editor.remove_index(apps.get_model("auditlog", "LogEntry"), HISTORY_INDEX)


class Migration(migrations.Migration):
    dependencies = [
        ("scoring", "0011_deleted_deployments"),
        ("auditlog", "0017_add_actor_email"),
    ]

    operations = [migrations.RunPython(add_index, remove_index)]
