"""Fresh slices: a run never scores an older slice than its package accepts, silently. It
waits for its slice, starts when it lands, and fails (and retries) past its deadline.

Time is the tick's `now`: the tests move it on instead of sleeping for an hour."""

import re
import shutil
from datetime import UTC, date, datetime, time, timedelta

import pytest
from django.utils import timezone

from scoring.engine import waiting
from scoring.models import Deployment, PackageVersion, ScoringRun
from scoring.packages.deployments import DeployError, check_slice_age
from scoring.runs import dispatch
from tests.factories import features, packages
from tests.factories.web import upload
from tests.flows import (
    committed_entities,
    deploy,
    failure_emails,
    notifications_sent,
    wait_for_runs,
    wait_until,
)

pytestmark = pytest.mark.django_db(transaction=True)
LATE_ROWS, EARLY_ROWS = 321, 500  # the slices differ in size: a reader can tell which was scored


@pytest.fixture
def late_slice(feature_table, settings):
    """A date far in the past whose slice has not landed, the day before's has; the tick's
    process looks at the same feature table as the worker's. Yields (date, land)."""
    settings.FEATURES_URI = str(feature_table)
    settings.FAILURE_EMAIL_GATHER_SECONDS = 2  # as the worker's: tick fails runs here
    day = date.today() - timedelta(days=40)
    features.write_feature_slice(feature_table, day - timedelta(days=1), rows=EARLY_ROWS)
    yield day, lambda: features.write_feature_slice(feature_table, day, rows=LATE_ROWS)
    for folder in (day, day - timedelta(days=1)):
        shutil.rmtree(feature_table / f"dt={folder.isoformat()}", ignore_errors=True)


def fire_on(deployment: Deployment, day: date) -> None:
    """The deployment's schedule fires at 06:00 UTC of `day` (already past)."""
    fire = datetime.combine(day, time(6), tzinfo=UTC)
    Deployment.objects.filter(id=deployment.id).update(next_run_at=fire)


def waiting_run(deployment: Deployment) -> ScoringRun:
    wait_until(
        lambda: deployment.runs.filter(status=ScoringRun.Status.WAITING).exists(),
        "the run waits for its slice",
        60,
    )
    return deployment.runs.get()


def test_a_run_waits_for_a_slice_that_lands_after_the_tick_then_scores_it(
    worker, owner, validated, bucket, late_slice, alice, api
):
    day, land = late_slice
    model = deploy(owner, packages.function_package(), "spend", validated)
    fire_on(model, day)
    dispatch.tick()

    run = waiting_run(model)
    expected = f"waiting for the slice of {day}; latest is {day - timedelta(days=1)}"
    assert run.waiting_for == expected
    assert run.attempts == 0 and run.slice_date is None and run.rows is None
    assert expected in alice.get(f"/models/{model.id}/").content.decode()
    assert api.get(f"/api/v1/runs/{run.id}/").json()["waiting_for"] == expected
    assert api.get(f"/api/v1/runs/{run.id}/").json()["status"] == "waiting"
    status_page = alice.get("/status/").content.decode()
    assert expected in status_page and "Waiting for feature slices" in status_page

    # Ticks before the slice lands leave it waiting.
    assert waiting.recheck(timezone.now() + timedelta(minutes=10)) == []
    land()
    assert waiting.recheck(timezone.now() + timedelta(minutes=20)) == [run.id]

    [run] = wait_for_runs([model.id])
    assert (run.status, run.slice_date, run.rows) == ("succeeded", day, LATE_ROWS)
    assert run.attempts == 1 and run.waiting_for == ""
    assert len(committed_entities(model.id, day)) == LATE_ROWS


def test_the_models_waiting_for_one_slice_start_together_in_one_batch(
    worker, owner, validated, bucket, late_slice
):
    day, land = late_slice
    models = [
        deploy(owner, packages.function_package(), name, validated) for name in ("one", "two")
    ]
    for model in models:
        fire_on(model, day)
    dispatch.tick()
    for model in models:
        waiting_run(model)
    land()
    queued = waiting.recheck(timezone.now() + timedelta(minutes=20))

    runs = wait_for_runs([m.id for m in models])
    assert sorted(queued) == sorted(run.id for run in runs)
    assert [run.slice_date for run in runs] == [day, day]
    assert len({run.batch_id for run in runs}) == 1


def test_a_slice_that_never_lands_fails_at_the_deadline_naming_both_dates_and_retries(
    worker, owner, validated, bucket, late_slice, mailbox
):
    day, _ = late_slice
    package = packages.function_package(params={"wait_for_slice_hours": 1})
    model = deploy(owner, package, "spend", validated, email="risk@bank.example")
    fire_on(model, day)
    dispatch.tick()
    run = waiting_run(model)
    since = run.waiting_since

    assert waiting.recheck(since + timedelta(minutes=59)) == []
    run.refresh_from_db()
    assert run.status == "waiting"
    waiting.recheck(since + timedelta(minutes=61))

    run.refresh_from_db()
    previous = day - timedelta(days=1)
    assert run.status == "retrying" and run.attempts == 1
    assert run.error == (
        f"waited 1 h for the slice of {day} of the features; the latest slice there is {previous}"
    )
    assert run.next_attempt_at == since + timedelta(minutes=61 + 30)
    notifications_sent()
    [message] = failure_emails(mailbox())
    assert message["To"] == "risk@bank.example"
    body = message.get_payload()[0].get_payload(decode=True).decode()
    assert f"the slice of {day}" in body and f"the latest slice there is {previous}" in body
    assert "attempt 1 of 3" in body

    # The retry comes due: it runs, finds the slice still missing, and waits again.
    dispatch.tick(run.next_attempt_at)
    wait_until(
        lambda: ScoringRun.objects.filter(id=run.id, status="waiting", attempts=1).exists(),
        "the retry waits again",
        60,
    )


def test_score_now_takes_an_older_slice_only_when_asked(
    worker, owner, validated, bucket, late_slice, api
):
    day, _ = late_slice
    plain = deploy(owner, packages.function_package(), "plain", validated)
    older = deploy(owner, packages.function_package(), "older", validated)
    plain_run = api.post(f"/api/v1/models/{plain.id}/runs/", {"date": str(day)}, format="json")
    assert plain_run.status_code == 202 and plain_run.json()["allow_older_slice"] is False
    response = api.post(
        f"/api/v1/models/{older.id}/runs/",
        {"date": str(day), "allow_older_slice": True},
        format="json",
    )
    assert response.status_code == 202 and response.json()["allow_older_slice"] is True

    [taken] = wait_for_runs([older.id])
    assert (taken.status, taken.slice_date, taken.rows) == (
        "succeeded",
        day - timedelta(days=1),
        EARLY_ROWS,
    )
    assert waiting_run(plain).awaited_slice == day


def test_a_model_that_accepts_older_slices_scores_the_latest_within_its_age(
    worker, owner, validated, bucket, late_slice, api
):
    day, _ = late_slice
    model = deploy(owner, packages.function_package(), "weekly", validated)
    response = api.patch(f"/api/v1/models/{model.id}/", {"max_slice_age_days": 3}, format="json")
    assert response.json()["max_slice_age_days"] == 3
    api.post(f"/api/v1/models/{model.id}/runs/", {"date": str(day)}, format="json")

    [run] = wait_for_runs([model.id])
    assert (run.status, run.slice_date) == ("succeeded", day - timedelta(days=1))


# --- without the worker ------------------------------------------------------------


def run_of(max_age_in_package=None, on_deployment=None, allow_older_slice=False) -> ScoringRun:
    params = {} if max_age_in_package is None else {"max_slice_age_days": max_age_in_package}
    return ScoringRun(
        deployment=Deployment(max_slice_age_days=on_deployment),
        version=PackageVersion(package={"params": params}),
        date=date(2026, 12, 3),
        allow_older_slice=allow_older_slice,
    )


@pytest.mark.parametrize(
    ("in_package", "on_deployment", "allow_older", "oldest"),
    [
        (None, None, False, date(2026, 12, 3)),  # the default: the slice of its own date
        (7, None, False, date(2026, 11, 26)),  # a weekly model's package accepts a week
        (7, 1, False, date(2026, 12, 2)),  # the form or the API wins over the package
        (None, None, True, None),  # score now with allow_older_slice: any
    ],
)
def test_the_oldest_slice_a_run_accepts(in_package, on_deployment, allow_older, oldest):
    assert waiting.oldest_accepted(run_of(in_package, on_deployment, allow_older)) == oldest


def test_the_waiting_words_name_the_slice_and_the_latest_there_is():
    run = run_of()
    run.status, run.awaited_slice, run.latest_slice = "waiting", date(2026, 12, 3), None
    assert run.waiting_for == "waiting for the slice of 2026-12-03; latest is none"
    run.awaited_slice, run.latest_slice = date(2026, 11, 26), date(2026, 11, 20)
    assert (
        run.waiting_for == "waiting for a slice from 2026-11-26 to 2026-12-03; latest is 2026-11-20"
    )


@pytest.mark.parametrize("value", [-1, 367, "soon", 1.5, True])
def test_a_bad_slice_age_is_refused_with_a_clear_message(value):
    with pytest.raises(DeployError, match="max_slice_age_days must be a whole number of days"):
        check_slice_age(value)


def test_the_upload_form_sets_the_slice_age(alice, bucket):
    response = upload(alice, name="weekly", max_slice_age_days="6")
    assert response.status_code == 201, response.content
    assert Deployment.objects.get(name="weekly").max_slice_age_days == 6
    response = upload(alice, name="bad", max_slice_age_days="a week")
    assert response.status_code == 400
    assert "max_slice_age_days must be a whole number" in response.json()["error"]
    assert not Deployment.objects.filter(name="bad").exists()


def slice_age_input(page: str) -> str:
    [field] = re.findall(r'<input id="id_max_slice_age_days"[^>]*>', page)
    return field


def test_the_slice_age_set_on_the_model_page_is_cleared_by_emptying_it(alice, bucket, deployment):
    form = {"email": "", "schedule": "daily", "timezone": "UTC"}
    url = f"/models/{deployment.id}/settings/"
    alice.post(url, {**form, "max_slice_age_days": "5"})
    alice.post(url, form)  # a form without the field leaves it
    deployment.refresh_from_db()
    assert deployment.max_slice_age_days == 5

    response = alice.post(url, {**form, "max_slice_age_days": ""}, follow=True)

    deployment.refresh_from_db()
    assert deployment.max_slice_age_days is None
    field = slice_age_input(response.content.decode())
    assert 'value=""' in field and "the package's: 0" in field
    run = ScoringRun(
        deployment=deployment, version=PackageVersion(package={}), date=date(2026, 12, 3)
    )
    assert waiting.oldest_accepted(run) == date(2026, 12, 3)  # the package's default again


def test_the_slice_age_set_through_the_api_is_cleared_by_null(api, bucket, deployment):
    url = f"/api/v1/models/{deployment.id}/"
    assert (
        api.patch(url, {"max_slice_age_days": 3}, format="json").json()["max_slice_age_days"] == 3
    )
    kept = api.patch(url, {"email": "risk@bank.example"}, format="json")
    assert kept.json()["max_slice_age_days"] == 3

    response = api.patch(url, {"max_slice_age_days": None}, format="json")

    assert response.status_code == 200 and response.json()["max_slice_age_days"] is None
    deployment.refresh_from_db()
    assert deployment.max_slice_age_days is None
    refused = api.patch(url, {"max_slice_age_days": ""}, format="json")
    assert refused.status_code == 400 and "max_slice_age_days" in refused.json()["errors"]


def test_score_now_on_the_model_page_takes_a_date_and_an_older_slice_when_ticked(
    worker, owner, validated, bucket, late_slice, alice
):
    day, _ = late_slice
    model = deploy(owner, packages.function_package(), "spend", validated)

    response = alice.post(f"/models/{model.id}/score/", {"date": "03/12/2026"}, follow=True)
    assert "&#x27;03/12/2026&#x27; is not a date: use YYYY-MM-DD" in response.content.decode()
    assert not model.runs.exists()

    alice.post(f"/models/{model.id}/score/", {"date": str(day), "allow_older_slice": "1"})
    [run] = wait_for_runs([model.id])
    assert (run.date, run.slice_date, run.allow_older_slice) == (
        day,
        day - timedelta(days=1),
        True,
    )
    page = alice.get(f"/models/{model.id}/").content.decode()
    assert "older allowed" in page


def test_a_waiting_run_still_fails_at_its_deadline_while_the_source_is_down(
    owner, settings, celery_app_configured
):
    from tests.factories.runs import make_models
    from tests.faults import closed_port

    settings.FEATURES_URI = f"postgresql://postgres@127.0.0.1:{closed_port()}/features?table=x"
    [model] = make_models(owner, 1, prefix="churn")
    since = timezone.now() - timedelta(hours=7)  # the site waits 6 hours by default
    run = ScoringRun.objects.create(
        deployment=model,
        version=model.versions.get(),
        date=date(2026, 12, 3),
        status=ScoringRun.Status.WAITING,
        awaited_slice=date(2026, 12, 3),
        latest_slice=date(2026, 12, 2),
        waiting_since=since,
        started_at=since,
    )

    assert waiting.recheck(timezone.now()) == []

    run.refresh_from_db()
    assert (run.status, run.attempts) == ("retrying", 1)
    assert run.error == (
        "waited 6 h for the slice of 2026-12-03 of the features; "
        "the latest slice there is 2026-12-02"
    )
    assert run.notifications.get().error == run.error
