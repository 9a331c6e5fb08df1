"""A version's key becomes the name of its FileField on STORAGES["packages"]: the column
is renamed and keeps its values and its unique constraint, so every existing row names
its object as before (`<username>/<slug>/v<N>.dill`)."""

from django.db import migrations, models

import scoring.models


class Migration(migrations.Migration):
    dependencies = [("scoring", "0005_notifications")]

    operations = [
        migrations.RenameField(model_name="packageversion", old_name="key", new_name="file"),
        migrations.AlterField(
            model_name="packageversion",
            name="file",
            field=models.FileField(
                max_length=400, storage=scoring.models.package_storage, unique=True, upload_to=""
            ),
        ),
    ]
