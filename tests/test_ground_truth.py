"""Ground truth end to end: real runs scored by the worker into the scores table, labels that
land late (and in pieces) in a Parquet LABELS_URI, and the hourly pass driven day by day
through its `now`."""

import shutil
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from scoring.engine import features as feature_sources
from scoring.engine import scores
from scoring.models import MaturedReport, ScoringRun
from scoring.quality import ground_truth
from scoring.reports import matured
from tests.factories import features
from tests.factories.runs import make_models
from tests.flows import deploy, postgres_uri, wait_for_runs

pytestmark = pytest.mark.django_db(transaction=True)
ROWS = 2000
LAG = 7
FLIPPED_REGIONS = ["north", "south"]  # about half the customers


def churn_logit(frame: pd.DataFrame) -> np.ndarray:
    """The relationship the labels follow (tests.factories.features.churn_labels)."""
    return (
        -1.5
        + 0.4 * frame["late_payments"]
        - 0.02 * frame["tenure_months"]
        + 0.01 * frame["monthly_spend"]
        + (frame["plan"] == "basic") * 0.8
    ).to_numpy("float64")


def churn_package(gini_oot: float, **params) -> dict:
    """A model that knows the relationship as it was when it was trained."""

    def churn_score(frame):
        logit = (
            -1.5
            + 0.4 * frame["late_payments"].to_numpy()
            - 0.02 * frame["tenure_months"].to_numpy()
            + 0.01 * frame["monthly_spend"].to_numpy()
            + (frame["plan"].astype(str) == "basic").to_numpy() * 0.8
        )
        return 1 / (1 + np.exp(-logit))

    return {
        "model": churn_score,
        "features": ["late_payments", "tenure_months", "monthly_spend", "plan"],
        "params": {"target": "churn", "label_lag_days": LAG, **params},
        "meta": {"gini_oot": gini_oot},
    }


def outcomes(frame: pd.DataFrame, seed: int, flipped: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    churned = (rng.random(len(frame)) < 1 / (1 + np.exp(-churn_logit(frame)))).astype(int)
    if flipped:  # the relationship turns around for a segment: its best customers leave
        segment = frame["region"].isin(FLIPPED_REGIONS).to_numpy()
        churned[segment] = 1 - churned[segment]
    return churned


def out_of_time_gini() -> float:
    """The Gini the model has on the population (on 200,000 customers)."""
    frame = features.feature_frame(200_000, seed=99)
    auc = roc_auc_score(outcomes(frame, seed=100), churn_logit(frame))
    return round(2 * auc - 1, 3)


def write_labels(root: Path, day: date, frame: pd.DataFrame, rows=slice(None), **columns) -> None:
    folder = root / f"dt={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    part = len(list(folder.glob("*.parquet")))
    labels = pd.DataFrame({"entity_id": frame["entity_id"], **columns}).iloc[rows]
    labels.to_parquet(folder / f"part-{part}.parquet", index=False)


def noon(day: date) -> datetime:
    return datetime.combine(day, time(12), tzinfo=UTC)


def check(day: date) -> int:
    """The hourly pass as beat runs it, on `day`."""
    return ground_truth.check_matured(
        noon(day), feature_sources.labels_from_settings(), scores.run_scores, matured.announce
    )


@pytest.fixture
def scenario_days(feature_table):
    """Three weeks of slices long ago (their own dates: no other test scores them)."""
    first = date.today() - timedelta(days=300)
    days = [first + timedelta(days=i) for i in range(21)]
    frames = {}
    for index, day in enumerate(days):
        frames[day] = features.feature_frame(ROWS, seed=1000 + index)
        folder = feature_table / f"dt={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        frames[day].to_parquet(folder / "part-0.parquet", index=False)
    yield days, frames
    for day in days:
        shutil.rmtree(feature_table / f"dt={day.isoformat()}", ignore_errors=True)


@pytest.fixture
def labels_root(tmp_path, settings) -> Path:
    root = tmp_path / "labels"
    root.mkdir()
    settings.LABELS_URI = str(root)
    return root


def score_days(api, model, days) -> dict[date, ScoringRun]:
    for day in days:
        response = api.post(f"/api/v1/models/{model.id}/runs/", {"date": str(day)}, format="json")
        assert response.status_code == 202, response.content
    runs = wait_for_runs([model.id], timeout=300)
    assert {run.status for run in runs} == {"succeeded"}, [(r.date, r.error) for r in runs]
    return {run.date: run for run in runs}


def test_the_gini_alert_fires_when_the_flipped_days_mature_not_before(
    worker, owner, validated, bucket, api, scenario_days, labels_root, mailoutbox, alice
):
    days, frames = scenario_days
    gini_oot = out_of_time_gini()
    model = deploy(owner, churn_package(gini_oot), "churn", validated, email="risk@bank.example")
    runs = score_days(api, model, days)
    flipped_days = days[14:]

    seen_alert_on = None
    for today in (days[0] + timedelta(days=LAG + i) for i in range(21)):
        landed = today - timedelta(days=LAG)  # the outcomes of `landed` are known today
        frame = frames[landed]
        churned = outcomes(frame, seed=2000 + days.index(landed), flipped=landed in flipped_days)
        if landed == days[0]:  # the first day's labels come in two pieces
            write_labels(labels_root, landed, frame, slice(0, ROWS // 2), churn=churned)
        else:
            write_labels(labels_root, landed, frame, churn=churned)
        before = len(mailoutbox)
        assert check(today) == 1, today  # only the run that matured today changed
        if landed == days[0]:
            first = ScoringRun.objects.get(id=runs[days[0]].id)
            assert first.performance["joined"] == ROWS // 2
            assert first.performance["unlabelled_share"] == pytest.approx(0.5)
            assert first.performance["complete"] is False
            write_labels(labels_root, landed, frame, slice(ROWS // 2, None), churn=churned)
            assert check(today) == 1  # the rest landed: measured again
        statuses = dict(
            ScoringRun.objects.filter(deployment=model, performance__isnull=False).values_list(
                "date", "performance_status"
            )
        )
        if any(status == "alert" for status in statuses.values()) and seen_alert_on is None:
            seen_alert_on = today
            [email] = mailoutbox[before:]
    matured_runs = {r.date: r for r in ScoringRun.objects.filter(deployment=model)}

    # Days 1-14 rank as trained: no alert, and the expected Gini within the intervals as
    # often as 95 % intervals hold it: one day in twenty may miss it (and warn); fewer than
    # 11 of 14 happens about once in 240 such scenarios (binomial, 14 days, 0.95).
    held = 0
    for day in days[:14]:
        p = matured_runs[day].performance
        assert p["complete"] and p["joined"] == ROWS and p["unlabelled_share"] == 0
        assert abs(p["gini"] - gini_oot) < 0.08, (day, p["gini"])
        assert matured_runs[day].performance_status in ("ok", "warning"), day
        held += p["gini_interval"][0] <= gini_oot <= p["gini_interval"][1]
    assert held >= 11, held
    # Days 15-21: the flipped segment drags the Gini far below, past its interval.
    for day in flipped_days:
        p = matured_runs[day].performance
        assert p["gini_interval"][1] < gini_oot - 0.1, (day, p["gini_interval"])
        assert matured_runs[day].performance_status == "alert"
    # The alert fired the day the first flipped day matured, not before.
    assert seen_alert_on == flipped_days[0] + timedelta(days=LAG)
    assert email.to == ["risk@bank.example"]
    assert email.subject.startswith("[Dropscore] Ground truth: ALERT, churn ranked with Gini "), (
        email.subject
    )
    assert str(flipped_days[0]) in email.subject and f"(expected {gini_oot:.3f})" in email.subject
    assert "more than its interval allows" in email.body

    page = alice.get(f"/models/{model.id}/").content.decode()
    assert "Gini by scoring date, matured" in page and 'id="gini-chart"' in page
    assert len(ground_truth.history(model)) == 21
    api_run = api.get(f"/api/v1/runs/{matured_runs[days[-1]].id}/").json()
    assert api_run["performance_status"] == "alert"
    assert api_run["performance"]["gini"] == pytest.approx(
        matured_runs[days[-1]].performance["gini"]
    )
    assert len(api_run["performance"]["calibration"]) == 10
    # Nothing new landed: the next pass measures nothing and tells no one.
    sent = MaturedReport.objects.count()
    assert check(days[-1] + timedelta(days=LAG + 1)) == 0
    assert MaturedReport.objects.count() == sent


def test_a_labels_table_without_the_models_target_says_so_and_scoring_goes_on(
    worker, owner, validated, bucket, api, scenario_days, labels_root, alice
):
    days, frames = scenario_days
    package = churn_package(0.4)
    package["params"]["target"] = "defaulted"
    model = deploy(owner, package, "credit", validated)
    [day] = days[:1]
    runs = score_days(api, model, [day])
    write_labels(labels_root, day, frames[day], churn=np.zeros(ROWS, dtype=int))

    check(day + timedelta(days=LAG))

    run = ScoringRun.objects.get(id=runs[day].id)
    assert (run.status, run.rows) == ("succeeded", ROWS)  # scoring is unaffected
    assert run.performance_status == ""
    message = (
        f"the labels table has no column 'defaulted' (the package's params.target) for {day}: "
        "its Gini cannot be measured"
    )
    assert run.performance["error"] == message
    page = alice.get(f"/models/{model.id}/").content.decode()
    assert f"Run of {day}: {message}." in page.replace("&#x27;", "'")
    assert 'id="gini-chart"' not in page


def test_without_labels_configured_the_model_page_says_why_there_is_no_gini(alice, owner, settings):
    settings.LABELS_URI = ""
    [model] = make_models(owner, 1, prefix="churn")
    version = model.versions.get()
    version.package = {**version.package, "params": {"target": "churned"}}
    version.save()

    page = alice.get(f"/models/{model.id}/").content.decode()

    assert "No ground truth is configured on this site (LABELS_URI)" in page
    assert "target churned, known 30 days after scoring" in page


# --- the labels' sources: the feature sources' kinds --------------------------------

LABEL_DAY = date(2026, 11, 20)
LABELS = pd.DataFrame({"entity_id": [1, 2, 3, 4], "churned": [1, 0, None, 1]})


def labels_in_postgres() -> str:
    from django.db import connection

    uri = postgres_uri("labels_test")
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE labels_test (entity_id bigint, dt date, churned int)")
        cursor.executemany(
            "INSERT INTO labels_test VALUES (%s, %s, %s)",
            [
                (e, LABEL_DAY, None if pd.isna(c) else int(c))
                for e, c in LABELS.itertuples(index=False)
            ],
        )
    return uri


def labels_in_s3(request) -> str:
    import boto3
    from django.conf import settings

    s3 = boto3.client(
        "s3",
        endpoint_url=request.getfixturevalue("s3_server").url,
        aws_access_key_id=settings.S3_ACCESS_KEY,
        aws_secret_access_key=settings.S3_SECRET_KEY,
        region_name=settings.S3_REGION,
    )
    if "labels-test" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket="labels-test")
    key = f"churn/dt={LABEL_DAY}/part-0.parquet"
    s3.put_object(Bucket="labels-test", Key=key, Body=LABELS.to_parquet(index=False))
    return "s3://labels-test/churn"


@pytest.mark.parametrize("kind", ["local", "s3", "postgres"])
def test_labels_are_read_from_each_kind_of_source_like_features(kind, request, settings, tmp_path):
    if kind == "local":
        write_labels(tmp_path, LABEL_DAY, LABELS, churned=LABELS["churned"])
        settings.LABELS_URI = str(tmp_path)
    elif kind == "s3":
        settings.LABELS_URI = labels_in_s3(request)
    else:
        settings.LABELS_URI = labels_in_postgres()
    labels = feature_sources.labels_from_settings()

    assert LABEL_DAY in labels.slices()
    assert labels.missing(LABEL_DAY, ["entity_id", "defaulted"]) == ["defaulted"]
    found = ground_truth.read_labels(labels, LABEL_DAY, "churned")
    assert found["entity_id"].tolist() == [1, 2, 4]  # no outcome yet: not a label
    assert found["outcome"].tolist() == [1, 0, 1]
