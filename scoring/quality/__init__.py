"""Data quality: the levels (ok, warning, alert) and thresholds, the metrics, the checks
of a committed run against its baseline, and the row samples they compare."""
