"""Data quality through the real engine: three days, the third one drifted, and the reports."""

import shutil
from datetime import date, timedelta

import pytest
from django.conf import settings
from pyarrow import fs

from scoring.models import Report, ScoringRun
from scoring.packages import storage
from scoring.runs import dispatch, lifecycle
from tests.factories import features, packages
from tests.flows import deploy, report_emails, subject, text_of, wait_for_runs

ROWS = 3000
pytestmark = pytest.mark.django_db(transaction=True)


def write_day(feature_table, day: date, seed: int, drifted: bool = False) -> None:
    frame = features.feature_frame(ROWS, seed=seed)
    if drifted:  # spending doubles and customers are newer: both the inputs and the scores move
        frame["monthly_spend"] = frame["monthly_spend"] * 2.5
        frame["tenure_months"] = frame["tenure_months"] * 0.3
    folder = feature_table / f"dt={day.isoformat()}"
    folder.mkdir()
    frame.to_parquet(folder / "part-0.parquet")


def score_day(day: date, deployments_) -> dict[str, ScoringRun]:
    """One batch with every model for `day`, as tick would send it; the finished runs by name."""
    dispatch.send_batch([lifecycle.request_run(d, day).id for d in deployments_])
    finished = wait_for_runs([d.id for d in deployments_])
    by_name = {run.deployment.name: run for run in finished if run.date == day}
    assert {run.status for run in by_name.values()} == {"succeeded"}, by_name
    return by_name


def test_two_calm_days_then_a_drifted_one_alerts_and_each_user_gets_one_report_per_batch(
    worker, owner, outsider, validated, feature_table, bucket, mailbox, api
):
    days = [date.today() + timedelta(days=40 + i) for i in range(3)]
    try:
        write_day(feature_table, days[0], seed=100)
        write_day(feature_table, days[1], seed=101)
        write_day(feature_table, days[2], seed=102, drifted=True)
        churn = deploy(owner, packages.sklearn_package(), "churn", validated)
        spend = deploy(owner, packages.function_package(), "spend", validated)
        theirs = deploy(outsider, packages.function_package(), "their-spend", validated)
        models = [churn, spend, theirs]

        first = score_day(days[0], models)
        first_reports = report_emails(mailbox, days[0], 2)
        second = score_day(days[1], models)
        second_reports = report_emails(mailbox, days[1], 2)
        third = score_day(days[2], models)
        third_reports = report_emails(mailbox, days[2], 2)
    finally:
        for day in days:
            shutil.rmtree(feature_table / f"dt={day.isoformat()}", ignore_errors=True)

    for run in [*first.values(), *second.values(), *third.values()]:
        run.refresh_from_db()  # the checks finish just after the runs: the reports came after them
    # Day 1: nothing to compare with (no reference scores in these packages).
    assert all(run.quality["baseline"] is None for run in first.values())
    assert all(run.quality["psi"] is None for run in first.values())
    assert {run.quality_status for run in first.values()} == {"ok"}

    # Day 2 looks like day 1: every check is ok, against day 1's run.
    for name, run in second.items():
        quality = run.quality
        assert quality["baseline"]["run_id"] == first[name].id, name
        assert quality["psi_status"] == "ok" and quality["psi"] < 0.1, (name, quality["psi"])
        assert quality["adversarial_status"] == "ok", (name, quality["adversarial_auc"])
        assert quality["rows"] == quality["baseline_rows"] == ROWS
        assert run.quality_status == "ok", (name, quality)

    # Day 3 drifted: the spend models' scores move (PSI alert), and the drifting
    # inputs are named, most drifting first.
    for name in ("spend", "their-spend"):
        quality = third[name].quality
        assert quality["baseline"]["run_id"] == second[name].id
        assert quality["psi_status"] == "alert" and quality["psi"] >= 0.25, quality["psi"]
        assert quality["adversarial_status"] == "alert", quality["adversarial_auc"]
        assert quality["features"][0]["name"] == "monthly_spend"
        assert third[name].quality_status == "alert"
    body = api.get(f"/api/v1/runs/{third['spend'].id}/").json()
    assert body["quality"]["psi_status"] == "alert"
    assert body["quality"]["adversarial_status"] == "alert"
    churn_features = [f["name"] for f in third["churn"].quality["features"][:2]]
    assert set(churn_features) == {"monthly_spend", "tenure_months"}
    assert third["churn"].quality["adversarial_status"] == "alert"

    # One report per user per batch: the owner's lists both models, the other user's one.
    for reports_of_day in (first_reports, second_reports, third_reports):
        assert sorted(m["To"] for m in reports_of_day) == [
            "alice@bank.example",
            "mallory@telco.example",
        ]
    assert (
        Report.objects.filter(owner=owner).count()
        == Report.objects.filter(owner=outsider).count()
        == 3
    )
    calm = {m["To"]: subject(m) for m in second_reports}
    assert calm["alice@bank.example"] == f"[Dropscore] OK — 2 models scored ({days[1]})"
    assert calm["mallory@telco.example"] == f"[Dropscore] OK — their-spend scored ({days[1]})"
    drifted = {m["To"]: m for m in third_reports}
    assert subject(drifted["alice@bank.example"]).startswith("[Dropscore] ALERT — ")
    alice_text = text_of(drifted["alice@bank.example"])
    assert "churn" in alice_text and "spend" in alice_text and "their-spend" not in alice_text
    assert "monthly_spend" in alice_text and "[ALERT]" in alice_text
    mallory_text = text_of(drifted["mallory@telco.example"])
    assert "their-spend" in mallory_text and "churn" not in mallory_text
    assert (
        f"/reports/{Report.objects.get(owner=outsider, batch=third['their-spend'].batch).id}/"
        in (mallory_text)
    )


def test_the_next_days_check_needs_only_the_previous_runs_profile_not_its_scores(
    worker, owner, validated, feature_table, bucket, mailbox
):
    days = [date.today() + timedelta(days=50 + i) for i in range(2)]
    try:
        write_day(feature_table, days[0], seed=200)
        write_day(feature_table, days[1], seed=201, drifted=True)
        spend = deploy(owner, packages.function_package(), "spend", validated)
        first = score_day(days[0], [spend])["spend"]
        # The first day's scores are gone from S3: only its profile is left to compare with.
        # (Put back afterwards: the table's log still names them for the session's readers.)
        filesystem = storage.arrow_filesystem()
        partition = f"{settings.SCORES_BUCKET}/scores/dt={days[0].isoformat()}/model_id={spend.id}"
        kept = {
            info.path: filesystem.open_input_stream(info.path).read()
            for info in filesystem.get_file_info(fs.FileSelector(partition))
        }
        filesystem.delete_dir(partition)
        try:
            second = score_day(days[1], [spend])["spend"]
        finally:
            for path, data in kept.items():
                with filesystem.open_output_stream(path) as sink:
                    sink.write(data)
    finally:
        for day in days:
            shutil.rmtree(feature_table / f"dt={day.isoformat()}", ignore_errors=True)

    first.refresh_from_db()
    second.refresh_from_db()
    assert first.profile["rows"] == ROWS and sum(first.profile["deciles"]["counts"]) == ROWS
    quality = second.quality
    assert quality["baseline"] == {
        "kind": "run",
        "run_id": first.id,
        "date": days[0].isoformat(),
        "rows": ROWS,
    }
    assert quality["rows"] == quality["baseline_rows"] == ROWS
    assert quality["psi_status"] == "alert" and quality["psi"] >= 0.25, quality["psi"]
    # Today's scores were counted in yesterday's bins while they were written.
    assert second.profile["against"]["edges"] == first.profile["deciles"]["edges"]
    assert sum(quality["histogram"]["baseline"]) == pytest.approx(1.0, abs=1e-3)
    assert quality["features"][0]["name"] == "monthly_spend"


def test_a_baseline_scored_before_profiles_were_kept_is_read_back_instead(
    worker, owner, validated, feature_table, bucket, mailbox
):
    days = [date.today() + timedelta(days=60 + i) for i in range(2)]
    try:
        write_day(feature_table, days[0], seed=300)
        write_day(feature_table, days[1], seed=301, drifted=True)
        spend = deploy(owner, packages.function_package(), "spend", validated)
        first = score_day(days[0], [spend])["spend"]
        ScoringRun.objects.filter(id=first.id).update(profile=None)  # as before migration 0008
        second = score_day(days[1], [spend])["spend"]
    finally:
        for day in days:
            shutil.rmtree(feature_table / f"dt={day.isoformat()}", ignore_errors=True)

    second.refresh_from_db()
    assert second.profile["against"] is None  # no bins were known when it scored
    assert second.quality["baseline"]["run_id"] == first.id
    assert second.quality["baseline_rows"] == ROWS
    assert second.quality["psi_status"] == "alert" and second.quality["psi"] >= 0.25
