"""Ground truth: once a run's outcomes are known, how well did its scores rank them?

A package names its `target` (a column of LABELS_URI) and its `label_lag_days`: a run of
date D matures on D + lag. A beat task (`check_matured`) finds matured runs, joins their
scores with the labels of D by entity id, and stores `ScoringRun.performance`:

    {"target", "model_kind": "classifier"|"regressor", "scored", "joined",
     "unlabelled_share", "labels": rows of labels read, "complete": bool,
     "auc", "gini", "ks" (each with "<name>_interval": [low, high]), "positive_share",
     "calibration": [{low, high, rows, mean_score, observed_rate}, ...],
     or "rmse", "mae" (with intervals) for regressors,
     "expected_gini", "gini_warn", "gini_alert", "status", "checked_at", "matured_on"}
    or {"target", "error": "what is wrong, in the user's words", ...}

Labels arrive late and in pieces: a run whose scores are not all labelled is looked at
again on each pass, and measured again when more of its labels have landed, for
RECHECK_DAYS after it matured. Its status: a warning when the upper end of its Gini's
interval is below `gini_warn` (default: the package's meta.gini_oot), an alert below
`gini_alert` (default: 0.1 below that) — a drop larger than the interval allows.

The labels and the scores come from the engine (the source's `slices`, `columns` and
`batches`: Parquet, PostgreSQL, or with ENGINE=spark a table Spark reads; the scores table's
reader), so another engine may supply either.
"""

import logging
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
from django.db import transaction

from scoring.models import Role, ScoringRun
from scoring.packages import params
from scoring.quality import levels, performance

log = logging.getLogger(__name__)
RECHECK_DAYS = 90  # labels later than this after maturity are not waited for
GINI_ALERT_DROP = 0.1  # the default alert line: this far below the expected Gini
LABEL_BATCH_ROWS = 200_000

# A run's entity_id and score columns from the scores table (scoring.engine.scores).
ScoreReader = Callable[[ScoringRun], Iterator[pa.RecordBatch]]
# Told of runs that matured on this pass (or whose status changed): scoring.reports.
Announce = Callable[[list[ScoringRun]], None]


def matured_on(run: ScoringRun) -> date:
    return run.date + timedelta(
        days=params.value(run.version.package.get("params"), "label_lag_days")
    )


def candidates(today: date) -> list[ScoringRun]:
    """Succeeded runs with a target whose outcomes are due and not yet all labelled."""
    runs = (
        ScoringRun.objects.filter(
            status=ScoringRun.Status.SUCCEEDED,
            version__package__params__target__isnull=False,
            date__lte=today,
        )
        .exclude(performance__complete=True)
        .select_related("deployment", "version")
        .order_by("date")
    )
    return [
        run
        for run in runs
        if run.version.package["params"]["target"]  # a JSON null names no column
        and matured_on(run) <= today < matured_on(run) + timedelta(days=RECHECK_DAYS)
    ]


def check_matured(now: datetime, labels, read_scores: ScoreReader, announce: Announce) -> int:
    """Measure every matured run whose labels changed since it was last measured; tell the
    owners of runs that matured or changed status. How many runs were measured."""
    if labels is None:
        return 0
    runs = candidates(now.date())
    if not runs:
        return 0
    seen = PassLabels(labels)
    measured, told = 0, []
    for run in runs:
        try:
            result = measure(run, seen, read_scores, now)
        except Exception:
            log.exception(
                "the ground-truth check of run %s failed; the next pass tries again", run.id
            )
            continue
        if result is None:
            continue  # nothing new since the last pass
        before = run.performance_status
        with transaction.atomic():
            run.performance, run.performance_status = result, result.get("status") or ""
            run.performance_checked_at = now
            run.save(update_fields=["performance", "performance_status", "performance_checked_at"])
        measured += 1
        if "error" not in result and (before == "" or before != run.performance_status):
            told.append(run)
    if told:
        announce(told)
    return measured


class PassLabels:
    """The labels as one pass sees them: the dates landed, listed once, and each date's
    columns and each (date, target)'s outcomes read once for all the runs of that date (a
    Spark read is a job). Runs come in date order, so one date's are kept at a time."""

    def __init__(self, source):
        self.source = source
        self.dates = set(source.slices())
        self.day: date | None = None
        self.columns: set[str] = set()
        self.outcomes: dict[str, pd.DataFrame] = {}

    def on(self, day: date) -> None:
        if day != self.day:
            self.columns = set(self.source.columns(day))
            self.day, self.outcomes = day, {}

    def missing(self, day: date, columns: list[str]) -> list[str]:
        self.on(day)
        return [name for name in columns if name not in self.columns]

    def read(self, day: date, target: str) -> pd.DataFrame:
        self.on(day)
        if target not in self.outcomes:
            self.outcomes[target] = read_labels(self.source, day, target)
        return self.outcomes[target]


def measure(
    run: ScoringRun, labels: PassLabels, read_scores: ScoreReader, now: datetime
) -> dict | None:
    """The run's performance on the labels there are now; None when they are the same
    as last time (nothing to recompute)."""
    package = run.version.package
    target = package["params"]["target"]
    head = {"target": target, "matured_on": str(matured_on(run)), "checked_at": now.isoformat()}
    if run.date not in labels.dates:
        return unchanged_or(run, {**head, "error": f"no labels for {run.date} have landed yet"})
    missing = labels.missing(run.date, [labels.source.id_column, target])
    if missing:
        return unchanged_or(
            run,
            {
                **head,
                "error": f"the labels table has no column {', '.join(map(repr, missing))} "
                f"(the package's params.target) for {run.date}: its Gini cannot be measured",
            },
        )
    outcomes = labels.read(run.date, target)
    previous = run.performance or {}
    if "error" not in previous and previous.get("labels") == len(outcomes):
        return None
    joined, scored = join(read_scores(run), outcomes)
    result = {
        **head,
        "labels": len(outcomes),
        "scored": scored,
        "joined": len(joined),
        "unlabelled_share": 1 - len(joined) / scored if scored else None,
        "complete": scored > 0 and len(joined) == scored,
    }
    if len(joined) == 0:
        return {**result, "error": f"none of the {scored:,} scored entities has a label yet"}
    return {**result, **metrics(run, joined, package)}


def unchanged_or(run: ScoringRun, result: dict) -> dict | None:
    previous = run.performance or {}
    return None if previous.get("error") == result.get("error") else result


def read_labels(labels, day: date, target: str) -> pd.DataFrame:
    """The labelled entities of `day`: id and outcome, rows without an outcome dropped."""
    id_column = labels.id_column
    batches = list(labels.batches(day, [id_column, target], LABEL_BATCH_ROWS))
    table = pa.Table.from_batches(batches) if batches else pa.table({id_column: [], target: []})
    frame = table.to_pandas().rename(columns={id_column: "entity_id", target: "outcome"})
    return frame.dropna(subset=["outcome"]).drop_duplicates("entity_id", keep="last")


def join(
    score_batches: Iterator[pa.RecordBatch], outcomes: pd.DataFrame
) -> tuple[pd.DataFrame, int]:
    """The scored entities that have an outcome, and how many were scored."""
    batches = list(score_batches)
    if not batches:
        return outcomes.iloc[0:0].assign(score=[]), 0
    frame = pa.Table.from_batches(batches).to_pandas()
    frame["entity_id"] = frame["entity_id"].astype(str)
    keyed = outcomes.assign(entity_id=outcomes["entity_id"].astype(str))
    return frame.merge(keyed, on="entity_id", how="inner"), len(frame)


def metrics(run: ScoringRun, joined: pd.DataFrame, package: dict) -> dict:
    outcomes, scores = joined["outcome"].to_numpy(), joined["score"].to_numpy("float64")
    if package.get("method") == "predict":
        return {
            "model_kind": "regressor",
            **performance.regression(outcomes=outcomes, scores=scores),
        }
    try:
        found = performance.classification(outcomes=outcomes, scores=scores, seed=run.id)
    except ValueError as exc:
        return {"model_kind": "classifier", "error": str(exc)}
    lines = gini_lines(package)
    status = levels.below(found["gini_interval"][1], lines["gini_warn"], lines["gini_alert"])
    return {"model_kind": "classifier", **found, **lines, "status": status}


def gini_lines(package: dict) -> dict:
    """The expected Gini (meta.gini_oot) and the lines below which a run warns or alerts."""
    expected = number((package.get("meta") or {}).get("gini_oot"))
    package_params = package.get("params")
    warn = params.value(package_params, "gini_warn")
    warn = expected if warn is None else warn
    alert = params.value(package_params, "gini_alert")
    if alert is None and warn is not None:
        alert = round(warn - GINI_ALERT_DROP, 6)
    return {"expected_gini": expected, "gini_warn": warn, "gini_alert": alert}


def number(value) -> float | None:
    try:
        found = float(value)
    except (TypeError, ValueError):
        return None
    return found if np.isfinite(found) else None


def history(deployment) -> list[dict]:
    """The champion's matured runs of a model by scoring date, for its chart: Gini and its
    interval (a challenger's are in its comparison with the champion)."""
    runs = deployment.runs.filter(performance__gini__isnull=False, role=Role.CHAMPION).order_by(
        "date"
    )
    return [
        {
            "date": str(run.date),
            "gini": run.performance["gini"],
            "low": run.performance["gini_interval"][0],
            "high": run.performance["gini_interval"][1],
            "expected": run.performance.get("expected_gini"),
            "status": run.performance_status,
            "joined": run.performance["joined"],
            "unlabelled_share": run.performance["unlabelled_share"],
        }
        for run in runs.only("date", "performance", "performance_status")
    ]
