"""A team's first minutes, in a real browser: Alice makes a team, adds Bob as a member,
drops a package with the team as its owner; Bob then sees it in his list as the team's and
may change it; Vera, a viewer, sees it without its buttons."""

import pytest
from django.contrib.auth.models import User

from scoring.models import Deployment
from tests.factories import packages
from tests.factories.browser import drop_file, log_in

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_team_is_made_a_colleague_added_and_a_package_dropped_for_the_team(
    page, browser, live_server, worker, bucket, owner, artifacts, errors
):
    User.objects.create_user("bob", "bob@bank.example", "bob-password-123")
    User.objects.create_user("vera", "vera@bank.example", "vera-password-123")
    log_in(page, live_server, "alice", "alice-password-123")
    page.click("nav >> text=Teams")
    page.fill("#id_team_name", "Retail")
    page.click("#make-team button")
    page.wait_for_selector("text=The team Retail is made; you are its manager.")
    for username, role in (("bob", "member"), ("vera", "viewer")):
        page.fill("#id_member", username)
        page.select_option("#id_member_role", role)
        page.click("#member-form button")
        page.wait_for_selector(f"text={username} is a {role} of Retail.")
    assert page.inner_text('tr[data-member="bob"]').split("\t")[1].startswith("member")
    page.screenshot(path=f"{artifacts}/team-page.png", full_page=True)

    page.goto(f"{live_server.url}/")
    page.select_option("#id_team", "retail")
    assert page.input_value("#id_email") == ""  # the team's address, or its members
    drop_file(page, packages.dumps(packages.catboost_package()), "churn.dill")
    page.wait_for_selector("#upload-result.ok")
    page.wait_for_selector('tr[data-model="churn"] .badge.valid', timeout=60_000)
    assert "team Retail" in page.inner_text('tr[data-model="churn"]')
    model = Deployment.objects.get(name="churn")
    assert (model.team.slug, model.owner, model.email) == ("retail", None, "")
    assert bucket() == ["teams/retail/churn/v1.dill"]

    for username, may_change in (("bob", True), ("vera", False)):
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        try:
            theirs = context.new_page()
            log_in(theirs, live_server, username, f"{username}-password-123")
            theirs.goto(f"{live_server.url}/?owner=retail")
            row = theirs.inner_text('tr[data-model="churn"]')
            assert ("Pause" in row) is may_change and ("view only" in row) is not may_change
            theirs.click('tr[data-model="churn"] a.name')
            line = theirs.inner_text("#owner-line")
            assert (
                "owned by the team Retail" in line
                and f"its team's {username == 'bob' and 'member' or 'viewer'}" in line
            )
            assert (theirs.locator("#upload-form").count() == 1) is may_change
            theirs.screenshot(path=f"{artifacts}/team-model-{username}.png", full_page=True)
        finally:
            context.close()
    assert errors == []
