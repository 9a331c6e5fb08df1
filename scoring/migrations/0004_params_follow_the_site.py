"""Validation used to write every default into a package's params, so a site's settings
(CHUNK_ROWS, PSI_WARN, ...) never reached it. Drop the values equal to the format's
defaults from the packages validated so: they follow the site like new ones."""

from django.db import migrations

# The format's defaults as validation wrote them (scoring.packages.contract.PARAM_DEFAULTS
# when this migration was made; kept here so that later changes do not rewrite history).
WRITTEN_DEFAULTS = {
    "positive_class": None,
    "chunk_rows": 100_000,
    "max_attempts": 3,
    "retry_delay_minutes": 30.0,
    "psi_warn": 0.1,
    "psi_alert": 0.25,
    "adversarial_warn": 0.6,
    "adversarial_alert": 0.65,
}


def drop_written_defaults(apps, schema_editor):
    PackageVersion = apps.get_model("scoring", "PackageVersion")
    for version in PackageVersion.objects.exclude(package={}).iterator():
        params = (version.package or {}).get("params")
        if not isinstance(params, dict) or not set(WRITTEN_DEFAULTS) <= set(params):
            continue  # not written with every default: its values are the package's own
        version.package["params"] = {
            key: value
            for key, value in params.items()
            if key not in WRITTEN_DEFAULTS or value != WRITTEN_DEFAULTS[key]
        }
        version.save(update_fields=["package"])


class Migration(migrations.Migration):
    dependencies = [("scoring", "0003_text_choices")]

    operations = [migrations.RunPython(drop_written_defaults, migrations.RunPython.noop)]
