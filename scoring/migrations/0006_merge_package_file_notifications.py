"""0005_package_file and 0005_notifications were made side by side from 0004; they touch
different tables, so they merge as they are."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("scoring", "0005_notifications"), ("scoring", "0005_package_file")]

    operations = []
