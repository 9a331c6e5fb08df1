"""The daily online check: a day of an online model's logged answers against its batch run
(training-serving skew), through the real engine, the real request log and a real S3."""

import shutil
import uuid
from datetime import UTC, date, datetime, time, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from scoring import tasks
from scoring.models import Batch, Deployment, OnlineCheck, ScoringRun
from scoring.online import request_log, skew
from scoring.quality import profiles
from scoring.reports import content
from scoring.reports import mail as report_mail
from scoring.runs import dispatch, lifecycle
from tests.factories import features, packages
from tests.factories import reports as report_factory
from tests.factories import runs as runs_factory
from tests.factories.cast import api_client_for
from tests.factories.web import logged_in
from tests.flows import deploy, wait_for_runs

ROWS = 3000


def log_answers(
    deployment: Deployment,
    day: date,
    rows: pd.DataFrame,
    scores,
    *,
    role: str = "champion",
    status: int = 200,
    version: int = 1,
    columns: list[str] = features.FEATURES,
) -> None:
    """Requests of ten rows each, answered on `day`, as the serving process logs them."""
    entries = []
    for start in range(0, len(rows), 10):
        chunk = rows.iloc[start : start + 10]
        entries.append(
            request_log.Entry(
                time=datetime.combine(day, time(12), UTC),
                request_id=uuid.uuid4().hex,
                model_id=deployment.id,
                version=version,
                role=role,
                features=pa.Table.from_pandas(chunk[columns], preserve_index=False),
                entity_ids=chunk["entity_id"].tolist(),
                scores=list(scores[start : start + 10]) if status == 200 else None,
                latency_ms=1.2,
                status=status,
                error=None if status == 200 else "bad input",
            )
        )
    request_log.append(request_log.rows_of(entries))


# --- through the real engine -----------------------------------------------------


def score_day(feature_table, day: date, frame: pd.DataFrame, deployment) -> ScoringRun:
    folder = feature_table / f"dt={day.isoformat()}"
    folder.mkdir()
    frame.to_parquet(folder / "part-0.parquet")
    dispatch.send_batch([lifecycle.request_run(deployment, day).id])
    (run,) = wait_for_runs([deployment.id])
    assert run.status == "succeeded", run.error
    return run


@pytest.mark.django_db(transaction=True)
def test_traffic_like_the_slice_passes_and_traffic_with_spend_multiplied_alerts_naming_it(
    worker, owner, validated, feature_table, bucket
):
    day = date.today() + timedelta(days=120)
    package = packages.sklearn_package()
    model = package["model"]
    churn = deploy(owner, package, "churn", validated)
    Deployment.objects.filter(id=churn.id).update(online=True)
    frame = features.feature_frame(ROWS, seed=400)
    try:
        run = score_day(feature_table, day, frame, churn)
    finally:
        shutil.rmtree(feature_table / f"dt={day.isoformat()}")

    # The day of the run: rows of the slice it scored, answered with the model's own
    # predictions; beside them, a challenger's and failed requests with odd rows, which
    # the check leaves out.
    calm = frame.sample(1500, random_state=1)
    log_answers(churn, day, calm, model.predict_proba(calm[features.FEATURES])[:, 1])
    odd = calm.head(300).assign(monthly_spend=lambda f: f["monthly_spend"] * 10)
    log_answers(churn, day, odd, np.ones(300), role="challenger", version=2)
    log_answers(churn, day, odd, None, status=422)
    # The next day (no run of its own: the day before's is compared): spending up 2.5 times.
    shifted = frame.sample(1500, random_state=2).assign(
        monthly_spend=lambda f: f["monthly_spend"] * 2.5
    )
    log_answers(
        churn,
        day + timedelta(days=1),
        shifted,
        model.predict_proba(shifted[features.FEATURES])[:, 1],
    )

    passed = skew.check_day(churn, day)
    flagged = skew.check_day(churn, day + timedelta(days=1))

    assert (passed.status, passed.requests, passed.run_id) == ("ok", 1500, run.id)
    assert passed.quality["psi"] < 0.1 and passed.quality["adversarial_status"] == "ok"
    assert (flagged.status, flagged.requests, flagged.run_id) == ("alert", 1500, run.id)
    assert flagged.quality["features"][0]["name"] == "monthly_spend"
    assert flagged.quality["features"][0]["status"] == "alert"
    assert flagged.quality["baseline"]["run_id"] == run.id
    # Checking a day again replaces its result.
    skew.check_day(churn, day)
    assert OnlineCheck.objects.filter(deployment=churn).count() == 2


# --- straight in the database and the request log ----------------------------------


@pytest.fixture
def online_models(owner):
    """Two online models and one served only in batch, each with a valid version 1."""
    models = runs_factory.make_models(owner, 3, prefix="served")
    Deployment.objects.filter(id__in=[m.id for m in models[:2]]).update(online=True)
    return models


def batch_run_of(deployment: Deployment, day: date, scores: np.ndarray) -> ScoringRun:
    """A succeeded champion run of `day` that kept the profile of these scores (no sample)."""
    return ScoringRun.objects.create(
        deployment=deployment,
        version=deployment.versions.get(),
        date=day,
        status=ScoringRun.Status.SUCCEEDED,
        rows=len(scores),
        profile=profiles.summarize(scores),
    )


def traffic(rows: int, seed: int) -> pd.DataFrame:
    return features.feature_frame(rows, seed=seed)


@pytest.mark.django_db
def test_a_day_without_requests_is_no_traffic(table, online_models):
    served, other, _ = online_models
    log_answers(other, date(2026, 12, 1), traffic(20, 1), np.full(20, 0.3), columns=["age"])

    before_any_log = skew.check_day(served, date(2026, 11, 30))
    quiet = skew.check_day(served, date(2026, 12, 1))

    assert before_any_log.status == quiet.status == "no traffic"
    assert quiet.requests == 0 and quiet.run is None


@pytest.mark.django_db
def test_traffic_without_a_batch_run_of_that_day_or_the_day_before_is_no_batch(
    table, online_models
):
    served = online_models[0]
    day = date(2026, 12, 1)
    batch_run_of(served, day - timedelta(days=2), np.linspace(0, 1, 100))  # too old
    log_answers(served, day, traffic(40, 2), np.full(40, 0.4), columns=["age"])

    check = skew.check_day(served, day)

    assert (check.status, check.requests, check.run) == ("no batch", 40, None)


@pytest.mark.django_db
def test_the_daily_task_checks_yesterday_of_each_online_model_one_failing_alone(
    table, online_models, caplog
):
    broken, served, batch_only = online_models
    yesterday = skew.yesterday()
    rng = np.random.default_rng(5)
    for model in online_models:
        batch_run_of(model, yesterday, rng.beta(2, 5, 2000))
        log_answers(model, yesterday, traffic(200, 3), rng.beta(2, 5, 200), columns=["age"])
    # A log row that is not JSON (cut, or written by hand) fails that model's check only.
    cut = request_log.rows_of(
        [
            request_log.Entry(
                time=datetime.combine(yesterday, time(9), UTC),
                request_id="cut",
                model_id=broken.id,
                version=1,
                role="champion",
                features=pa.table({"age": [30.0]}),
                entity_ids=None,
                scores=[0.3],
                latency_ms=1.0,
                status=200,
            )
        ]
    )
    request_log.append(cut.set_column(6, "features", pa.array(['{"age": 3'])))

    tasks.check_online_traffic()

    checks = {check.deployment_id: check for check in OnlineCheck.objects.all()}
    assert list(checks) == [served.id]
    assert (checks[served.id].date, checks[served.id].status) == (yesterday, "ok")
    assert checks[served.id].requests == 200
    assert f"the online check of model {broken.id} for {yesterday} failed" in caplog.text


def test_beat_sends_the_check_daily_at_a_quarter_past_one_by_the_name_of_a_real_task():
    from celery.schedules import crontab
    from django.conf import settings

    entry = settings.CELERY_BEAT_SCHEDULE["check-online-traffic"]
    assert entry["task"] == tasks.check_online_traffic.name
    assert entry["schedule"] == crontab(minute="15", hour="1")


# --- what a person sees ----------------------------------------------------------------


def checked(deployment: Deployment, status: str, run: ScoringRun | None = None) -> OnlineCheck:
    """A day of the model's traffic checked as scoring.online.skew stores it."""
    quality = None
    if run is not None:
        quality = report_factory.quality(
            status,
            baseline={"kind": "batch_run", "run_id": run.id, "date": "2026-11-23", "rows": 100000},
            rows=1800,
            features=[
                {"name": "monthly_spend", "psi": 1.254, "importance": 0.18, "status": status},
                {"name": "age", "psi": 0.004, "importance": 0.03, "status": "ok"},
            ],
        )
    return OnlineCheck.objects.create(
        deployment=deployment,
        date=report_factory.DAY,
        run=run,
        requests=1800 if run else 0,
        quality=quality,
        status=status,
    )


@pytest.fixture
def served(owner) -> tuple[Deployment, ScoringRun]:
    """Alice's churn, online, whose traffic alerted against the batch run of its report."""
    churn = report_factory.deployment(owner, "churn")
    Deployment.objects.filter(id=churn.id).update(online=True)
    churn.refresh_from_db()
    run = report_factory.run(Batch.objects.create(), churn, "ok")
    checked(churn, "alert", run)
    return churn, run


@pytest.mark.django_db
def test_the_model_page_shows_the_day_the_requests_the_psi_the_drifted_feature_and_the_run(
    owner, served
):
    churn, run = served

    page = logged_in_page(owner, churn)

    block = page[page.index('id="online-check"') :]
    block = block[: block.index("</div>\n</div>")]
    assert "Online vs batch" in block and "2026-11-23" in block
    assert "data-online-status>alert<" in block and ">1,800<" in block
    assert "0.312" in block  # the score PSI
    assert "monthly_spend" in block and f'href="#run-{run.id}"' in block


@pytest.mark.django_db
def test_an_online_model_not_checked_yet_says_when_it_will_be(owner):
    churn = report_factory.deployment(owner, "churn")
    Deployment.objects.filter(id=churn.id).update(online=True)

    page = logged_in_page(owner, churn)

    assert "The first check compares a day of requests" in page


@pytest.mark.django_db
def test_the_api_gives_the_latest_online_check_or_null(owner, served):
    churn, _ = served
    batch_only = report_factory.deployment(owner, "limits")
    api = api_client_for(owner)

    body = api.get(f"/api/v1/models/{churn.id}/").json()
    other = api.get(f"/api/v1/models/{batch_only.id}/").json()

    assert body["online_check"] == {
        "date": "2026-11-23",
        "status": "alert",
        "psi": 0.312,
        "requests": 1800,
    }
    assert other["online_check"] is None


@pytest.mark.django_db
def test_the_report_lists_each_online_model_with_its_latest_check_alerts_first(
    owner, served, mailoutbox
):
    churn, run = served
    batch = run.batch
    calm = report_factory.deployment(owner, "a-calm-one")
    quiet = report_factory.deployment(owner, "b-quiet-one")
    batch_only = report_factory.deployment(owner, "c-batch-only")
    Deployment.objects.filter(id__in=[calm.id, quiet.id]).update(online=True)
    for model in (calm, quiet, batch_only):
        model_run = report_factory.run(batch, model, "ok")
        checked(
            model, "ok" if model != quiet else "no traffic", model_run if model != quiet else None
        )
    (report,) = content.build_reports(batch)

    report_mail.send_report(report, report_factory.NOW)

    text = mailoutbox[0].body
    online = text[text.index("Online vs batch") :].splitlines()[1:4]
    assert online[0].startswith("  [ALERT] churn, 2026-11-23: 1,800 requests, score PSI 0.312")
    assert "monthly_spend PSI 1.25" in online[0] and "against the batch run of" in online[0]
    assert online[1].startswith("  [NO TRAFFIC] b-quiet-one, 2026-11-23: 0 requests")
    assert online[2].startswith("  [OK] a-calm-one")
    assert "c-batch-only, 2026-11-23" not in text
    html = mailoutbox[0].alternatives[0][0]
    assert 'id="online-checks"' in html and "monthly_spend" in html


def logged_in_page(user, deployment: Deployment) -> str:
    response = logged_in(user).get(f"/models/{deployment.id}/")
    assert response.status_code == 200
    return response.content.decode()
