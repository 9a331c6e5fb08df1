"""The feature source the configured engine reads: with ENGINE=spark, the table as Spark
knows it (scoring.engine.spark.source); else the worker's own reader of FEATURES_URI
(scoring.engine.features)."""

from django.conf import settings

from scoring.engine import features


def configured():
    """The configured feature source, or None when FEATURES_URI is blank."""
    if settings.ENGINE == "spark" and settings.FEATURES_URI:
        from scoring.engine.spark.source import SparkSource

        return SparkSource(
            settings.FEATURES_URI,
            id_column=settings.FEATURES_ID_COLUMN,
            date_column=settings.FEATURES_DATE_COLUMN,
        )
    return features.source_from_settings()
