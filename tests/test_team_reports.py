"""Reports, failure and ground-truth emails of a team's models: to the team's report address
when it has one, else to each of its people inside their one email of the batch, their own
models first; a person who leaves leaves the team's models scored and reported to the team.

Runs are written to the database as the engine leaves them, except the last test's, which a
real worker scores from a real upload (the status page's test asks that worker too).
"""

import re
from datetime import UTC, date, datetime, timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from scoring.models import (
    Batch,
    Deployment,
    MaturedReport,
    Membership,
    Notification,
    Report,
    ScoringRun,
    ServiceToken,
)
from scoring.packages import teams
from scoring.reports import content, matured
from scoring.reports import mail as report_mail
from scoring.runs import lifecycle, notifications
from tests.factories import packages
from tests.factories.reports import NOW, deployment, run, team_deployment
from tests.factories.runs import make_models
from tests.factories.web import logged_in
from tests.flows import deploy, make_due, report_emails, subject, text_of, tick_until

pytestmark = pytest.mark.django_db

RETAIL_LIST = "retail-models@bank.example"


# --- helpers -------------------------------------------------------------------


@pytest.fixture
def batch() -> Batch:
    return Batch.objects.create(created_at=NOW, finished_at=NOW)


@pytest.fixture
def bob(db) -> User:
    return User.objects.create_user("bob", "bob@bank.example", "bob-password-123")


@pytest.fixture
def retail(owner, bob):
    """Alice manages the team Retail, Bob is a member; no report address yet."""
    team = teams.make_team("Retail", by=owner)
    teams.set_role(team, bob, "member")
    return team


@pytest.fixture
def risk(owner):
    """Alice's second team, Risk, where she is alone."""
    return teams.make_team("Risk", by=owner)


def with_address(team, address: str = RETAIL_LIST):
    team.report_email = address
    team.save()
    return team


def to(address: str, messages) -> list:
    return [message for message in messages if address in message.to]


def send_reports(batch: Batch) -> list[Report]:
    built = content.build_reports(batch)
    for report in built:
        assert report_mail.send_report(report, NOW) is True
    return built


# --- a team with a report address --------------------------------------------------


def test_a_team_with_a_report_address_gets_one_email_of_its_models_and_its_people_none(
    owner, bob, retail, batch, mailoutbox
):
    with_address(retail)
    run(batch, deployment(owner, "churn"), "ok")
    run(batch, team_deployment(retail, "pricing"), "alert")
    run(batch, team_deployment(retail, "stock"), "ok")

    send_reports(batch)

    [team_email] = to(RETAIL_LIST, mailoutbox)
    assert team_email.to == [RETAIL_LIST]
    assert team_email.subject == "[Dropscore] ALERT — pricing drifted (2 models, 2026-11-23)"
    assert "Dropscore report of the team Retail for 2026-11-23: 2 models" in team_email.body
    assert "pricing" in team_email.body and "stock" in team_email.body
    assert "churn" not in team_email.body
    [alice_email] = to(owner.email, mailoutbox)
    assert alice_email.subject == "[Dropscore] OK — churn scored (2026-11-23)"
    assert "pricing" not in alice_email.body and "Team Retail" not in alice_email.body
    assert to(bob.email, mailoutbox) == []
    assert len(mailoutbox) == 2


def test_a_team_model_with_an_address_of_its_own_reports_there_and_not_to_the_people(
    owner, bob, retail, batch, mailoutbox
):
    run(batch, team_deployment(retail, "pricing", email="pricing-desk@bank.example"), "ok")

    send_reports(batch)

    [message] = mailoutbox
    assert message.to == ["pricing-desk@bank.example"]
    assert Report.objects.get().team == retail


# --- a team without one: each person, in their one email -------------------------------


def test_each_person_gets_one_email_with_their_own_models_then_each_teams(
    owner, bob, retail, risk, batch, mailoutbox
):
    token = User.objects.create_user("retail/pipeline", "pipeline@bank.example")
    ServiceToken.objects.create(team=retail, user=token, name="pipeline", role="member")
    Membership.objects.create(team=retail, user=token, role="member")
    carol = User.objects.create_user("carol", "carol@bank.example", is_active=False)
    Membership.objects.create(team=retail, user=carol, role="member")
    run(batch, deployment(owner, "churn"), "ok")
    run(batch, team_deployment(retail, "pricing"), "alert")
    run(batch, team_deployment(risk, "limits"), "warning")

    for _ in range(2):  # a second finish of the batch sends nothing more
        content.build_reports(batch)
        for report in Report.objects.all():
            report_mail.send_report(report, NOW)

    assert sorted(message.to[0] for message in mailoutbox) == [owner.email, bob.email]
    [alice] = to(owner.email, mailoutbox)
    assert alice.to == [owner.email]
    assert alice.subject == "[Dropscore] ALERT — pricing drifted (3 models, 2026-11-23)"
    body, html = alice.body, alice.alternatives[0][0]
    # Her own models first, then each team's, each under its heading.
    assert body.index("-- Your models --") < body.index("== churn")
    assert body.index("== churn") < body.index("-- Team Retail --") < body.index("== pricing")
    assert body.index("== pricing") < body.index("-- Team Risk --") < body.index("== limits")
    assert html.index("Your models") < html.index(">churn<") < html.index("Team Retail")
    assert html.index("Team Retail") < html.index(">pricing<") < html.index("Team Risk")
    [bobs] = to(bob.email, mailoutbox)
    assert bobs.subject == "[Dropscore] ALERT — pricing drifted (2026-11-23)"
    assert "-- Team Retail --" in bobs.body and "Your models" not in bobs.body
    assert "churn" not in bobs.body and "limits" not in bobs.body


def test_a_person_with_no_team_reads_the_report_as_before(owner, retail, batch, mailoutbox):
    run(batch, deployment(owner, "churn", "risk-team@bank.example"), "alert")
    run(batch, deployment(owner, "spend"), "ok")

    send_reports(batch)

    [message] = mailoutbox
    assert sorted(message.to) == [owner.email, "risk-team@bank.example"]
    assert "Your models" not in message.body and "Team " not in message.body


def test_a_team_with_nobody_left_keeps_its_report_as_a_page_sent_to_no_one(
    owner, staff, risk, batch, mailoutbox
):
    owner.is_active = False  # Risk's only person leaves
    owner.save()
    limits = run(batch, team_deployment(risk, "limits"), "ok")

    [report] = send_reports(batch)

    assert (report.team, report.owner) == (risk, None)
    assert list(report.runs.all()) == [limits]
    assert mailoutbox == []
    page = logged_in(staff).get(f"/reports/{report.id}/").content.decode()
    assert "report of the team Risk" in page and ">limits</a>" in page


def test_the_report_page_groups_the_models_by_owner(
    owner, bob, outsider, staff, retail, risk, batch
):
    run(batch, deployment(owner, "churn"), "ok")
    run(batch, team_deployment(retail, "pricing"), "alert")
    run(batch, team_deployment(risk, "limits"), "ok")
    content.build_reports(batch)
    report = Report.objects.get(owner=owner)

    page = logged_in(owner).get(f"/reports/{report.id}/").content.decode()
    assert page.index(">Your models</h2>") < page.index(">churn</a>")
    assert page.index(">churn</a>") < page.index(">Team Retail</h2>") < page.index(">pricing</a>")
    assert page.index(">pricing</a>") < page.index(">Team Risk</h2>") < page.index(">limits</a>")
    as_staff = logged_in(staff).get(f"/reports/{report.id}/").content.decode()
    assert ">Models of alice</h2>" in as_staff and "report of alice" in as_staff
    assert logged_in(bob).get(f"/reports/{report.id}/").status_code == 404


def test_a_teams_report_page_is_the_teams_and_staffs(owner, bob, outsider, staff, retail, batch):
    with_address(retail)
    pricing = run(batch, team_deployment(retail, "pricing"), "alert")
    [report] = content.build_reports(batch)

    for user in (owner, bob, staff):
        response = logged_in(user).get(f"/reports/{report.id}/")
        assert response.status_code == 200
        page = response.content.decode()
        assert "report of the team Retail" in page and ">pricing</a>" in page
        assert (
            logged_in(user).get(f"/reports/{report.id}/chart-{pricing.id}.png").status_code == 200
        )
    assert logged_in(outsider).get(f"/reports/{report.id}/").status_code == 404


def test_a_long_report_keeps_each_owners_lines_under_its_heading_in_bounded_queries(
    owner, retail, batch, mailoutbox
):
    own = make_models(owner, 40, prefix="mine")
    shared = make_models(owner, 40, prefix="team")
    Deployment.objects.filter(id__in=[m.id for m in shared]).update(
        owner=None, team=retail, email=""
    )
    for model in own + shared:
        run(batch, model, "ok")
    content.build_reports(batch)
    report = Report.objects.get(owner=owner)  # Bob's holds the team's 40

    with CaptureQueriesContext(connection) as queries:
        assert report_mail.send_report(report, NOW) is True
    [message] = mailoutbox
    body = message.body
    assert message.subject == "[Dropscore] OK — 80 models scored (2026-11-23)"
    assert body.index(" Your models:") < body.index("] mine-000:") < body.index("] mine-039:")
    assert body.index("] mine-039:") < body.index(" Team Retail:") < body.index("] team-000:")
    assert len(re.findall(r"(?m)^  \[OK\] (mine|team)-\d+: ", body)) == 80
    assert len(queries) <= 15, len(queries)
    page = logged_in(owner).get(f"/reports/{report.id}/?page=2").content.decode()
    assert ">Your models</h2>" in page and ">Team Retail</h2>" in page  # runs 26 to 50


def test_the_page_of_a_team_model_links_each_person_to_their_own_report(owner, bob, retail, batch):
    pricing = run(batch, team_deployment(retail, "pricing"), "ok")
    content.build_reports(batch)
    alices, bobs = Report.objects.get(owner=owner), Report.objects.get(owner=bob)

    page = logged_in(owner).get(f"/models/{pricing.deployment_id}/").content.decode()
    assert f'href="/reports/{alices.id}/"' in page and f"/reports/{bobs.id}/" not in page
    page = logged_in(bob).get(f"/models/{pricing.deployment_id}/").content.decode()
    assert f'href="/reports/{bobs.id}/"' in page and f"/reports/{alices.id}/" not in page


# --- failure emails ------------------------------------------------------------------------


SOURCE_DOWN = "cannot connect to the feature source: connection refused"
# Tick's clock, a day after the failures are written: their gathering time is over.
LATER = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)


def running(batch: Batch, model) -> ScoringRun:
    """The model's run in its first attempt, as a worker claimed it."""
    made = run(batch, model, quality=None, quality_status="", rows=None, finished_at=None)
    ScoringRun.objects.filter(id=made.id).update(status=ScoringRun.Status.RUNNING)
    made.status = ScoringRun.Status.RUNNING
    return made


def test_a_failed_run_of_a_team_model_is_told_to_the_teams_address(
    owner, bob, retail, batch, mailoutbox
):
    with_address(retail)
    lifecycle.fail(running(batch, team_deployment(retail, "pricing")), SOURCE_DOWN)

    assert notifications.send_due(LATER) == 1
    [message] = mailoutbox
    assert message.to == [RETAIL_LIST]
    assert message.subject == "pricing failed for 2026-11-23 (attempt 1 of 3)"
    assert SOURCE_DOWN in message.body


def test_failures_of_a_team_without_an_address_reach_each_person_in_one_email_a_batch(
    owner, bob, retail, batch, mailoutbox
):
    carol = User.objects.create_user("carol", "carol@bank.example", is_active=False)
    Membership.objects.create(team=retail, user=carol, role="member")
    lifecycle.fail(running(batch, deployment(owner, "churn")), SOURCE_DOWN)
    lifecycle.fail(running(batch, team_deployment(retail, "pricing")), SOURCE_DOWN)
    lifecycle.fail(running(batch, team_deployment(retail, "stock")), SOURCE_DOWN)

    assert notifications.send_due(LATER) == 5  # alice: 3 failed attempts; bob: 2
    assert notifications.send_due(LATER + timedelta(hours=3)) == 0
    assert sorted(message.to[0] for message in mailoutbox) == [owner.email, bob.email]
    [alice] = to(owner.email, mailoutbox)
    assert alice.subject == "3 models failed for 2026-11-23"
    assert "Models: churn, pricing, stock" in alice.body
    [bobs] = to(bob.email, mailoutbox)
    assert bobs.subject == "2 models failed for 2026-11-23"
    assert "Models: pricing, stock" in bobs.body
    assert not Notification.objects.filter(sent_at__isnull=True).exists()


def test_a_failed_team_model_is_on_the_status_page_as_the_teams(
    owner, staff, retail, batch, worker
):
    run(batch, team_deployment(retail, "pricing"), "failed", finished_at=timezone.now())

    for user in (owner, staff):
        response = logged_in(user).get("/status.json")
        assert response.status_code == 200
        [failure] = response.json()["failures"]
        assert (failure["model"], failure["owner"]) == ("pricing", "team/retail")
    assert "team/retail" in logged_in(staff).get("/status/").content.decode()


# --- ground-truth emails -------------------------------------------------------------------


def measured(batch: Batch, model) -> ScoringRun:
    performed = run(batch, model, "ok")
    performed.performance = {
        "target": "churned",
        "gini": 0.41,
        "gini_interval": [0.38, 0.44],
        "expected_gini": None,
        "ks": 0.3,
        "ks_interval": [0.28, 0.32],
        "positive_share": 0.1,
        "joined": 100000,
        "scored": 100000,
        "complete": True,
    }
    performed.performance_status = "ok"
    performed.save()
    return performed


def test_ground_truth_of_team_models_follows_the_same_rule(
    owner, bob, retail, risk, batch, mailoutbox, django_capture_on_commit_callbacks
):
    with_address(risk, "risk-models@bank.example")
    runs = [
        measured(batch, deployment(owner, "churn")),
        measured(batch, team_deployment(retail, "pricing")),
        measured(batch, team_deployment(risk, "limits")),
    ]
    with django_capture_on_commit_callbacks(execute=True):
        matured.announce(runs)

    assert MaturedReport.objects.count() == 3  # alice's, bob's, Risk's
    bodies = {message.to[0]: message.body for message in mailoutbox}
    assert sorted(bodies) == [owner.email, bob.email, "risk-models@bank.example"]
    named = {
        address: sorted(n for n in ("churn", "pricing", "limits") if f"\n{n} (version" in body)
        for address, body in bodies.items()
    }
    assert named == {
        owner.email: ["churn", "pricing"],
        bob.email: ["pricing"],
        "risk-models@bank.example": ["limits"],
    }


# --- a person who leaves, through the real worker -----------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_deactivated_authors_team_models_are_scored_the_next_day_and_reported_to_the_team(
    worker, owner, bob, retail, risk, validated, bucket, mailbox
):
    """Retail has a report address; Risk has none, and Bob joins it: each model's report
    reaches its team's address or its remaining person, never the author who left."""
    with_address(retail)
    teams.set_role(risk, bob, "member")
    pricing = deploy(owner, packages.function_package(), "pricing", validated, team="retail")
    limits = deploy(owner, packages.function_package(), "limits", validated, team="risk")
    owner.is_active = False
    owner.save()

    make_due(pricing, limits)
    finished = tick_until([pricing.id, limits.id])

    assert [r.status for r in finished] == ["succeeded", "succeeded"]
    day: date = finished[0].date
    messages = report_emails(mailbox, day, 2)
    by_address = {message["To"]: message for message in messages}
    assert sorted(by_address) == [bob.email, RETAIL_LIST]
    assert subject(by_address[RETAIL_LIST]) == f"[Dropscore] OK — pricing scored ({day})"
    assert "of the team Retail" in text_of(by_address[RETAIL_LIST])
    assert subject(by_address[bob.email]) == f"[Dropscore] OK — limits scored ({day})"
    assert "-- Team Risk --" in text_of(by_address[bob.email])
    assert all(owner.email not in message["To"] for message in mailbox())
