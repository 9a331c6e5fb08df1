"""A new user's first minutes, in a real browser: log in, drop a package, see it validated."""

import pytest

from scoring.models import PackageVersion
from tests.factories import packages
from tests.factories.browser import drop_file, log_in

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_dropped_package_shows_progress_then_its_validation(
    page, live_server, worker, bucket, owner, artifacts
):
    log_in(page, live_server, "alice", "alice-password-123")
    page.fill("#id_email", "alice@bank.example")
    page.select_option("#id_schedule", "weekly")

    drop_file(page, packages.dumps(packages.catboost_package()), "churn.dill")

    page.wait_for_selector("#progress.shown")
    page.wait_for_selector("#upload-result.ok")
    assert "churn v1 uploaded" in page.inner_text("#upload-result")
    row = page.wait_for_selector('tr[data-model="churn"] .badge.valid', timeout=60_000)
    assert row.inner_text() == "valid"
    assert "7 features · predict_proba" in page.inner_text('tr[data-model="churn"]')
    assert "weekly" in page.inner_text('tr[data-model="churn"]')
    assert page.inner_text("#quota-text").startswith("1 of 10 active models")
    page.screenshot(path=f"{artifacts}/models-validated.png", full_page=True)

    version = PackageVersion.objects.get()
    assert (version.file.name, version.state) == ("alice/churn/v1.dill", "valid")
    assert bucket() == ["alice/churn/v1.dill"]

    page.click('tr[data-model="churn"] a.name')
    page.wait_for_selector("text=Features (7)")
    assert "monthly_spend" in page.inner_text("body")
    page.screenshot(path=f"{artifacts}/model-page.png", full_page=True)


def test_a_broken_file_is_refused_at_once_with_its_reason(
    page, live_server, bucket, owner, artifacts
):
    log_in(page, live_server, "alice", "alice-password-123")

    drop_file(page, b"PK\x03\x04 this is a zip file", "model.dill")

    page.wait_for_selector("#upload-result.error")
    assert "this file is not a pickle" in page.inner_text("#upload-result")
    assert "No models yet" in page.inner_text("#model-rows")
    page.screenshot(path=f"{artifacts}/upload-refused.png", full_page=True)
    assert bucket() == []


def test_an_invalid_package_shows_what_is_wrong(page, live_server, worker, bucket, owner):
    log_in(page, live_server, "alice", "alice-password-123")

    drop_file(
        page, packages.dumps({"model": packages.NoPredict(), "features": ["age"]}), "broken.dill"
    )

    page.wait_for_selector('tr[data-model="broken"] .badge.invalid', timeout=60_000)
    assert "model has no predict_proba or predict" in page.inner_text('tr[data-model="broken"]')
