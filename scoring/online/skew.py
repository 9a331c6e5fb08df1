"""Training-serving skew: a day of an online model's answers against its batch run.

Each day (beat, ONLINE_CHECK_CRON) the rows the champion answered (status 200) in the
request log are compared with the model's latest succeeded batch run of that day or the day
before, as the batch checks compare a run with the previous one (scoring.quality): the PSI
of all the logged scores in the run's decile bins (its profile), and on a sample of rows
the PSI of each feature ranked weighted by the model's importance, and the adversarial AUC.
The run is the batch's side, the traffic the current one.

Only the answers of the run's version are compared: a promotion during the day leaves the
other version's rows out, whose scores differ by construction. The logged features (JSON
text) are parsed for the sample only, and given the batch sample's types: a date that went
through JSON as text must not read as drift.
"""

import json
import logging
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as ds
from django.conf import settings
from django.utils import timezone

from scoring.engine import scores
from scoring.models import Deployment, OnlineCheck, Role, ScoringRun
from scoring.online import request_log
from scoring.quality import adversarial, assessment, levels, metrics, profiles, samples

log = logging.getLogger(__name__)
ANSWERED = (ds.field("role") == Role.CHAMPION.value) & (ds.field("status") == 200)


@dataclass
class Traffic:
    """A day's answers of one version: all their scores, and a sample of their rows."""

    scores: np.ndarray
    sample: pd.DataFrame  # the logged features, parsed, and `score`


def check_online_models(day: date) -> list[OnlineCheck]:
    """Check `day` for every online model, each alone: one that fails is logged and the
    others are still checked."""
    checked = []
    for deployment in Deployment.objects.filter(online=True).order_by("id"):
        try:
            checked.append(check_day(deployment, day))
        except Exception:
            log.exception("the online check of model %s for %s failed", deployment.id, day)
    return checked


def yesterday() -> date:
    """The last whole day of the log, whose `dt` is the UTC date of each request: beat's
    cron runs in TIME_ZONE, where yesterday may not be over in UTC yet."""
    return request_log.now().date() - timedelta(days=1)


def check_day(deployment: Deployment, day: date) -> OnlineCheck:
    """Compare the day's champion answers with the batch run and store the result (a day
    checked again is replaced)."""
    dataset = answers(deployment, day)
    versions = answering_versions(dataset)
    run = batch_run(deployment, day, list(versions))
    quality = None
    if not versions:
        status, requests = OnlineCheck.Status.NO_TRAFFIC, 0
    elif run is None:
        status, requests = OnlineCheck.Status.NO_BATCH, sum(versions.values())
    else:
        traffic = traffic_of(dataset, run.version.number, seed=deployment.id + day.toordinal())
        quality = compare(run, traffic)
        status, requests = quality["status"], len(traffic.scores)
    check, _ = OnlineCheck.objects.update_or_create(
        deployment=deployment,
        date=day,
        defaults={
            "run": run,
            "requests": requests,
            "quality": quality,
            "status": status,
            "checked_at": timezone.now(),
        },
    )
    return check


def answers(deployment: Deployment, day: date) -> ds.Dataset | None:
    """The model's partition of the day in the request log; None before the first log."""
    table = scores.open_table(request_log.TABLE)
    if table is None:
        return None
    return table.to_pyarrow_dataset(
        file_pruning_predicate=scores.partition_predicate(day, [deployment.id])
    )


def answering_versions(dataset: ds.Dataset | None) -> dict[int, int]:
    """{version number: rows} of the champion's answers."""
    if dataset is None:
        return {}
    counted = pc.value_counts(dataset.to_table(columns=["version"], filter=ANSWERED)["version"])
    return {item["values"].as_py(): item["counts"].as_py() for item in counted}


def batch_run(deployment: Deployment, day: date, versions: list[int]) -> ScoringRun | None:
    """The latest succeeded champion run of the day or the day before, of a version that
    answered (a run scores its date's slice: the day before's is the last one before)."""
    if not versions:
        return None
    return (
        ScoringRun.objects.filter(
            deployment=deployment,
            role=Role.CHAMPION,
            status=ScoringRun.Status.SUCCEEDED,
            date__in=[day, day - timedelta(days=1)],
            version__number__in=versions,
        )
        .select_related("version")
        .order_by("-date", "-id")
        .first()
    )


def traffic_of(dataset: ds.Dataset, version: int, seed: int) -> Traffic:
    """All the scores of the version's answers, and the rows of a uniform sample of them
    (QUALITY_SAMPLE_ROWS, as a run keeps): only the sample's features are read and parsed."""
    compared = ANSWERED & (ds.field("version") == version)
    logged_scores = dataset.to_table(columns=["score"], filter=compared)["score"]
    rows = len(logged_scores)
    taken = np.random.default_rng(seed).choice(
        rows, min(rows, settings.QUALITY_SAMPLE_ROWS), replace=False
    )
    sampled = dataset.take(np.sort(taken), columns=["features", "score"], filter=compared)
    sample = pd.DataFrame.from_records(
        [json.loads(text) for text in sampled["features"].to_pylist()]
    )
    sample["score"] = sampled["score"].to_numpy()
    return Traffic(logged_scores.to_numpy(), sample)


def compare(run: ScoringRun, traffic: Traffic) -> dict:
    """The quality dict (shape in scoring.quality.metrics) of the traffic against the run.

    Rows are not compared: a day's requests are no share of a slice."""
    package = run.version.package
    baseline_profile = assessment.profile_of(scores.score_reader(), run)
    edges = (baseline_profile.get("deciles") or {}).get("edges")
    compared = None
    batch = batch_sample(run)
    if batch is not None and len(traffic.sample):
        logged = typed_like(traffic.sample, batch)
        features = [name for name in package["features"] if name in batch and name in logged]
        compared = metrics.Samples(
            adversarial.SamplePair(batch, logged),
            features,
            (batch["score"].to_numpy(), logged["score"].to_numpy()),
            importance=assessment.importance_shares(package),
        )
    return metrics.compare_profiles(
        current_profile=profiles.summarize(traffic.scores, edges),
        baseline_profile=baseline_profile,
        samples=compared,
        thresholds=assessment.thresholds(run),
        baseline={
            "kind": levels.BATCH_RUN,
            "run_id": run.id,
            "date": run.date.isoformat(),
            "rows": baseline_profile["rows"],
        },
    )


def batch_sample(run: ScoringRun) -> pd.DataFrame | None:
    """The rows of the run's slice sample it scored: its features and `score`; None when
    its batch kept none."""
    if run.batch_id is None:
        return None
    score = f"score:{run.id}"
    features = run.version.package["features"]
    table = samples.load(run.batch_id, run.date, [*features, score], settings.QUALITY_SAMPLE_ROWS)
    if table is None or score not in table.column_names:
        return None
    present = [name for name in features if name in table.column_names]
    return samples.of_run(table, run.id, present).drop_columns([samples.KEY]).to_pandas()


def typed_like(logged: pd.DataFrame, batch: pd.DataFrame) -> pd.DataFrame:
    """The logged features with the batch sample's kinds: JSON gives numbers, text and null
    only, so dates come back as text and a missing number may come back as None."""
    typed = logged.copy()
    for name in batch.columns.intersection(logged.columns):
        dtype = batch[name].dtype
        if pd.api.types.is_datetime64_any_dtype(dtype):
            typed[name] = as_dates(logged[name], dtype)
        elif adversarial.is_numeric(batch[name]):
            typed[name] = pd.to_numeric(logged[name], errors="coerce")
    return typed


def as_dates(values: pd.Series, dtype) -> pd.Series:
    """Dates logged as text, in the batch's zone (or none), so the two sides compare."""
    parsed = pd.to_datetime(values, errors="coerce", utc=True)
    zone = getattr(dtype, "tz", None)
    return parsed.dt.tz_convert(zone) if zone is not None else parsed.dt.tz_localize(None)
