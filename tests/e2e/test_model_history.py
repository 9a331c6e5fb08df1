"""The model page's history in a real browser: who changed what, newest first, a page at a time."""

import pytest

from scoring.models import Deployment
from scoring.packages import deployments
from tests.factories.browser import log_in
from tests.factories.web import logged_in, upload

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_history_shows_each_change_newest_first_and_pages_back_to_the_upload(
    page, live_server, worker, bucket, owner, validated, artifacts, errors
):
    response = upload(logged_in(owner), name="churn", schedule="daily")
    deployment = Deployment.objects.get(id=response.json()["deployment"])
    validated(deployment.versions.get())  # its entry comes before the test's changes
    for number in range(55):  # more than a page of changes
        deployments.update(deployment, email=f"owner{number}@bank.example")

    log_in(page, live_server)
    page.goto(f"{live_server.url}/models/{deployment.id}/")
    page.click("button:has-text('Pause')")
    page.wait_for_selector("text=churn is paused")

    rows = page.locator("#history [data-history-entry]")
    assert rows.count() == 50
    newest = rows.nth(0).inner_text()
    assert "alice" in newest and "via web" in newest
    assert "status: active → paused" in newest
    assert "email: owner53@bank.example → owner54@bank.example" in rows.nth(1).inner_text()
    page.screenshot(path=f"{artifacts}/model-history.png", full_page=True)

    page.click("#history a[rel=next]")
    page.wait_for_url("**?history=2#history")
    older = page.locator("#history [data-history-entry]")
    assert "create alice/churn" in older.nth(older.count() - 1).inner_text()
    assert "sha256: — →" in page.inner_text("#history")
    assert errors == []
