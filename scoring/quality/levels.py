"""The levels of data quality, in one place: ok, warning, alert (and failed, for a run
that did not score), the worst of several, the thresholds that set them, and the words
for a baseline. The checks, the dashboard, the report and the tests all read them here.
"""

import math
from collections.abc import Iterable

OK, WARNING, ALERT, FAILED = "ok", "warning", "alert", "failed"
SEVERITY = (OK, WARNING, ALERT, FAILED)  # worst last
# The thresholds a package may set in its params; the site's settings are the defaults.
THRESHOLDS = ("psi_warn", "psi_alert", "adversarial_warn", "adversarial_alert")
# The baseline of an online model's day of traffic (scoring.online.skew): a batch run.
BATCH_RUN = "batch_run"


def worst(statuses: Iterable[str | None]) -> str:
    """The most severe of the statuses (failed > alert > warning > ok), None ignored; ok if none."""
    return max((s for s in statuses if s in SEVERITY), key=SEVERITY.index, default=OK)


def level(value: float | None, warn: float, alert: float) -> str | None:
    """ok below `warn`, warning below `alert`, alert at or above; None for no value."""
    if value is None or math.isnan(value):
        return None
    if value < warn:
        return OK
    return WARNING if value < alert else ALERT


def above(value: float | None, warn: float, alert: float) -> str | None:
    """warning above `warn`, alert above `alert` (strictly: 0 missing is ok)."""
    if value is None:
        return None
    return ALERT if value > alert else WARNING if value > warn else OK


def below(value: float | None, warn: float | None, alert: float | None) -> str | None:
    """alert below `alert`, warning below `warn`, else ok; None without a value or lines."""
    if value is None or warn is None:
        return None
    if alert is not None and value < alert:
        return ALERT
    return WARNING if value < warn else OK


def site_thresholds() -> dict[str, float]:
    """The site's thresholds (PSI_WARN, ...), read when asked: the environment decides."""
    from scoring.packages import params  # Django's settings: the metrics need none

    return {name: params.value(None, name) for name in THRESHOLDS}


def thresholds(*sources: dict | None) -> dict[str, float]:
    """Each threshold from the first source that sets it to a number, else the site's.

    Sources in order of precedence: the thresholds a check used, a package's params.
    """
    lines = site_thresholds()
    for name in lines:
        for source in sources:
            value = (source or {}).get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                lines[name] = value
                break
    return lines


def baseline_text(baseline: dict | None) -> str:
    """What a run was compared with, in the same words on the page and in the email."""
    if not baseline:
        return "none: this is the first run and the package has no reference scores"
    rows = f"{baseline['rows']:,}" if baseline.get("rows") is not None else "?"
    if baseline.get("kind") == "run":
        return f"the previous run, of {baseline.get('date', '?')} ({rows} rows)"
    if baseline.get("kind") == BATCH_RUN:
        return f"the batch run of {baseline.get('date', '?')} ({rows} rows)"
    return f"the package's reference scores ({rows} scores)"


def baseline_label(baseline: dict | None) -> str:
    """The baseline's name in a chart's legend."""
    if (baseline or {}).get("kind") == "run":
        return f"previous run ({baseline.get('date', '?')})"
    if (baseline or {}).get("kind") == BATCH_RUN:
        return f"batch run ({baseline.get('date', '?')})"
    return "reference scores"
