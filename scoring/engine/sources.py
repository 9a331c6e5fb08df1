"""The tables the configured engine reads: with ENGINE=spark, as Spark knows them
(scoring.engine.spark.source); else the worker's own readers (scoring.engine.features)."""

from django.conf import settings

from scoring.engine import features


def configured():
    """The feature source (FEATURES_URI), or None when it is blank."""
    if settings.ENGINE == "spark" and settings.FEATURES_URI:
        return spark_source(
            settings.FEATURES_URI, settings.FEATURES_ID_COLUMN, settings.FEATURES_DATE_COLUMN
        )
    return features.source_from_settings()


def labels():
    """The ground truth (LABELS_URI), or None when it is blank."""
    if settings.ENGINE == "spark" and settings.LABELS_URI:
        return spark_source(
            settings.LABELS_URI, settings.LABELS_ID_COLUMN, settings.LABELS_DATE_COLUMN
        )
    return features.labels_from_settings()


def spark_source(name: str, id_column: str, date_column: str):
    from scoring.engine.spark.source import SparkSource  # pyspark: only where ENGINE=spark

    return SparkSource(name, id_column=id_column, date_column=date_column)
