"""The four-eyes approval in real browsers: with REQUIRE_APPROVAL on, the owner asks for a
promotion on the model page and sees who must approve it; a staff member of the approvers'
group approves it in a session of their own; the next run, scored by the worker, uses the
new champion."""

import pytest
from django.contrib.auth.models import Group

from scoring.models import ChampionChange, ScoringRun
from tests.factories import packages
from tests.factories.browser import log_in
from tests.flows import deploy, table_rows

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_promotion_waits_for_a_second_person_then_the_next_run_scores_the_new_champion(
    page, browser, live_server, worker, bucket, owner, staff, validated, settings, artifacts, errors
):
    settings.REQUIRE_APPROVAL = True
    Group.objects.create(name=settings.APPROVERS_GROUP).user_set.add(staff)
    model = deploy(owner, packages.function_package(), "churn", validated)
    deploy(owner, packages.sklearn_package(), "churn", validated, role="challenger")

    # alice asks for the promotion of her challenger.
    log_in(page, live_server)
    page.goto(f"{live_server.url}/models/{model.id}/")
    page.fill("#id_promote_reason", "Gini +4 pts on OOT")
    page.click("#promote-form button")
    waiting = page.wait_for_selector("#waiting-change")
    assert "waiting for approval by sam" in waiting.inner_text()
    assert page.locator("#waiting-change button", has_text="Approve").count() == 0  # not hers
    assert page.inner_text("#champion").startswith("v1")
    page.locator("#roles").screenshot(path=f"{artifacts}/four-eyes-waiting.png")

    # sam, a staff member of the approvers' group, approves it in his own session.
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        sams = context.new_page()
        log_in(sams, live_server, "sam", "sam-password-123")
        sams.goto(f"{live_server.url}/models/{model.id}/")
        assert "Gini +4 pts on OOT" in sams.inner_text("#waiting-change")
        sams.click("#waiting-change button:has-text('Approve')")
        sams.wait_for_selector("text=v2 is the champion from the next run on.")
        assert sams.locator("#waiting-change").count() == 0
    finally:
        context.close()

    # alice's next run scores v2 as the champion.
    page.reload()
    assert page.inner_text("#champion").startswith("v2")
    changes = page.inner_text("#champion-changes tbody tr")
    assert "promote to v2" in changes and "alice" in changes and "sam" in changes
    page.click("button:has-text('Score now')")
    # The page follows the run and shows itself anew when it ends.
    page.wait_for_selector("[data-run-status].succeeded", timeout=120_000)
    (run,) = ScoringRun.objects.filter(deployment=model).select_related("version")
    assert (run.role, run.version.number, run.status) == ("champion", 2, "succeeded")
    assert page.inner_text(f"#run-{run.id} td").startswith(f"{run.date:%Y-%m-%d}\nv2")
    assert table_rows(model.id, run.date)["model_version"].unique().to_list() == [2]
    assert ChampionChange.objects.get().approved_by == staff
    assert errors == []
