"""A model's page through Django's test client: what validation read, the actions, the
schedule preview, the API token, who sees what, CSRF and help."""

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone
from django.utils.dateformat import format as format_date
from rest_framework.test import APIClient

from scoring.models import Deployment, PackageVersion
from scoring.packages import schedules
from tests.factories import features, packages
from tests.factories.web import SECRET_NAME, logged_in, snapshot, upload

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("bucket", "default_quotas"),
]


# --- the model page ------------------------------------------------------------


def test_the_model_page_shows_what_validation_read_from_a_catboost_package(
    alice, worker, validated, catboost_bytes
):
    upload(alice, name="churn")
    response = upload(alice, catboost_bytes, filename="churn-catboost.dill", name="churn")
    assert response.json()["version"] == 2
    version = validated(PackageVersion.objects.get(number=2))
    assert version.state == PackageVersion.State.VALID, version.message
    deployment = version.deployment
    deployment.refresh_from_db()

    response = alice.get(f"/models/{deployment.id}/")

    assert response.status_code == 200
    page = response.content.decode()
    assert "Features (7)" in page
    for feature in features.FEATURES:
        assert f'<span class="chip mono">{feature}</span>' in page
    assert "<dd>predict_proba · classes 0, 1</dd>" in page
    assert "<dt>author</dt><dd>alice</dd>" in page
    assert "<dt>gini_oot</dt><dd>0.42</dd>" in page
    assert "smoke test: scored" in page
    # The versions table, newest first.
    assert page.index('<td>v2 <span class="note">latest</span></td>') < page.index("<td>v1</td>")
    assert "churn-catboost.dill" in page
    # The next five runs of the daily schedule.
    runs = schedules.next_runs(deployment.schedule, deployment.timezone, timezone.now(), 5)
    assert "Next runs: " in page
    for run in runs:
        assert f"{format_date(run, 'D j M Y, H:i')} UTC" in page


def test_a_pending_model_page_says_it_is_validating(alice, deployment):
    page = alice.get(f"/models/{deployment.id}/").content.decode()

    assert f"<h1>{SECRET_NAME} " in page
    assert "Validating in a sandbox" in page
    assert f"Drop a new version of {SECRET_NAME} here" in page


# --- actions -------------------------------------------------------------------


def test_it_pauses_and_resumes_a_model(alice, deployment):
    url = f"/models/{deployment.id}/"

    paused = alice.post(f"{url}pause/", follow=True)
    deployment.refresh_from_db()
    assert paused.redirect_chain == [(url, 302)]
    assert (deployment.status, deployment.next_run_at) == (Deployment.Status.PAUSED, None)
    page = paused.content.decode()
    assert f"{SECRET_NAME} is paused: it will not be scored until resumed." in page
    assert "Paused: no runs until resumed." in page
    assert f'formaction="{url}resume/"' in page

    resumed = alice.post(f"{url}resume/", follow=True)
    deployment.refresh_from_db()
    assert deployment.status == Deployment.Status.ACTIVE
    assert deployment.next_run_at is not None
    assert f"{SECRET_NAME} is active again." in resumed.content.decode()
    assert "Next runs: " in resumed.content.decode()


def test_it_refuses_to_resume_a_model_over_the_quota(alice, deployment, settings):
    alice.post(f"/models/{deployment.id}/pause/")
    settings.QUOTA_ACTIVE_MODELS = 1
    upload(alice, packages.dumps(packages.function_package(meta={"v": 2})), name="other")

    response = alice.post(f"/models/{deployment.id}/resume/", follow=True)

    deployment.refresh_from_db()
    assert deployment.status == Deployment.Status.PAUSED
    assert "you have 1 of 1 active models" in response.content.decode()


def test_it_saves_new_settings(alice, deployment):
    response = alice.post(
        f"/models/{deployment.id}/settings/",
        {
            "email": "risk@bank.example",
            "schedule": "custom",
            "cron": "30 5 * * 1-5",
            "timezone": "Europe/London",
        },
        follow=True,
    )

    deployment.refresh_from_db()
    assert (deployment.email, deployment.schedule, deployment.timezone) == (
        "risk@bank.example",
        "30 5 * * 1-5",
        "Europe/London",
    )
    expected = schedules.next_runs("30 5 * * 1-5", "Europe/London", timezone.now())[0]
    assert deployment.next_run_at == expected
    page = response.content.decode()
    assert "Settings saved." in page
    assert 'value="30 5 * * 1-5"' in page
    assert 'value="risk@bank.example"' in page


def test_it_saves_a_preset_schedule(alice, deployment):
    alice.post(
        f"/models/{deployment.id}/settings/", {"email": "", "schedule": "weekly", "timezone": "UTC"}
    )

    deployment.refresh_from_db()
    assert (deployment.email, deployment.schedule) == ("alice@bank.example", "weekly")


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"email": "risk@bank.example", "schedule": "custom", "cron": "61 * * * *"},
            "is not a valid cron expression",
        ),
        (
            {"email": "risk@bank.example\nBcc: all@evil.example", "schedule": "weekly"},
            "is not a single valid address",
        ),
        ({"schedule": "weekly", "timezone": "Nowhere/Land"}, "unknown time zone"),
    ],
    ids=["bad cron", "header injection email", "unknown time zone"],
)
def test_bad_settings_show_the_error_and_change_nothing(alice, deployment, fields, message):
    before = snapshot(deployment.id)

    response = alice.post(f"/models/{deployment.id}/settings/", fields, follow=True)

    assert response.redirect_chain == [(f"/models/{deployment.id}/", 302)]
    page = response.content.decode()
    assert '<div class="flash error">' in page
    assert message in page
    assert "Settings saved." not in page
    assert snapshot(deployment.id) == before


def test_it_deletes_a_model_with_its_packages_and_goes_back_to_my_models(alice, deployment, bucket):
    upload(alice, packages.dumps(packages.function_package(meta={"v": 2})), name=SECRET_NAME)
    assert len(bucket()) == 2

    response = alice.post(f"/models/{deployment.id}/delete/", follow=True)

    assert response.redirect_chain == [("/", 302)]
    assert f"{SECRET_NAME} and its packages were deleted." in response.content.decode()
    assert not Deployment.objects.exists()
    assert not PackageVersion.objects.exists()
    assert bucket() == []
    assert alice.get(f"/models/{deployment.id}/").status_code == 404


def test_an_unknown_action_is_a_404_and_changes_nothing(alice, deployment):
    before = snapshot(deployment.id)
    assert alice.post(f"/models/{deployment.id}/explode/").status_code == 404
    assert snapshot(deployment.id) == before


@pytest.mark.parametrize("action", ["pause", "resume", "settings", "delete"])
def test_get_on_an_action_url_is_a_405(alice, deployment, action):
    before = snapshot(deployment.id)
    assert alice.get(f"/models/{deployment.id}/{action}/").status_code == 405
    assert snapshot(deployment.id) == before


def test_a_model_that_does_not_exist_is_a_404(alice):
    assert alice.get("/models/999999/").status_code == 404
    assert alice.post("/models/999999/pause/").status_code == 404


# --- schedule preview ----------------------------------------------------------


def test_the_schedule_preview_gives_the_next_three_runs(alice):
    response = alice.get("/schedule-preview/", {"schedule": "daily", "timezone": "Europe/London"})

    assert response.status_code == 200
    body = response.json()
    assert body["schedule"] == "daily (cron 0 6 * * *)"
    runs = [datetime.fromisoformat(run) for run in body["next_runs"]]
    assert len(runs) == 3
    assert runs == sorted(runs) and runs[0] > timezone.now()
    london = ZoneInfo("Europe/London")
    assert all((run.astimezone(london).hour, run.minute) == (6, 0) for run in runs)


def test_the_schedule_preview_reads_a_cron_in_utc_by_default(alice):
    body = alice.get("/schedule-preview/", {"schedule": "30 5 * * 1-5"}).json()

    assert body["schedule"] == "cron 30 5 * * 1-5"
    runs = [datetime.fromisoformat(run) for run in body["next_runs"]]
    assert len(runs) == 3
    assert all((run.hour, run.minute, run.weekday() < 5) == (5, 30, True) for run in runs)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"schedule": "61 * * * *"}, "is not a valid cron expression"),
        ({"schedule": "every minute"}, "is neither a preset"),
        ({"schedule": ""}, "schedule must be"),
        ({"schedule": "daily", "timezone": "Nowhere/Land"}, "unknown time zone"),
        ({"schedule": "* 6 * * *"}, "fires 60 times on"),
    ],
)
def test_the_schedule_preview_gives_a_400_with_the_message(alice, params, message):
    response = alice.get("/schedule-preview/", params)

    assert response.status_code == 400
    assert message in response.json()["error"]


# --- API token -----------------------------------------------------------------


def test_it_makes_a_token_and_a_new_one_revokes_the_old(alice):
    assert "You have no token yet." in alice.get("/token/").content.decode()

    made = alice.post("/token/", follow=True)
    assert made.redirect_chain == [("/token/", 302)]
    old_key = made.context["token"].key
    assert f'<pre id="token-key">{old_key}</pre>' in made.content.decode()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {old_key}")
    assert api.get("/api/v1/models/").status_code == 200

    remade = alice.post("/token/", follow=True)
    new_key = remade.context["token"].key
    assert new_key != old_key
    page = remade.content.decode()
    assert f'<pre id="token-key">{new_key}</pre>' in page
    assert old_key not in page
    assert "the old one no longer works" in page

    assert api.get("/api/v1/models/").status_code == 401
    api.credentials(HTTP_AUTHORIZATION=f"Token {new_key}")
    assert api.get("/api/v1/models/").status_code == 200


# --- who sees what -------------------------------------------------------------


# Every URL of another user's objects, with every method, is walked in tests/test_access.py.


def test_an_outsider_cannot_resume_a_paused_model(alice, deployment, outsider):
    alice.post(f"/models/{deployment.id}/pause/")
    before = snapshot(deployment.id)

    assert logged_in(outsider).post(f"/models/{deployment.id}/resume/").status_code == 404
    assert snapshot(deployment.id) == before


def test_an_outsider_does_not_see_the_owners_model_in_lists(deployment, outsider):
    mallory = logged_in(outsider)

    page = mallory.get("/").content.decode()
    assert SECRET_NAME not in page
    assert "0 of 10 active models, 0 B of 1 GB" in page
    status = mallory.get("/models/status/").json()
    assert SECRET_NAME not in status["rows"]
    assert status["pending"] is False
    assert status["quota"] == "0 of 10 active models, 0 B of 1 GB"


def test_the_same_name_makes_the_outsider_a_model_of_their_own(deployment, outsider, bucket):
    response = upload(
        logged_in(outsider),
        packages.dumps(packages.function_package(meta={"m": 1})),
        name=SECRET_NAME,
    )

    assert response.status_code == 201
    assert response.json()["deployment"] != deployment.id
    assert response.json()["version"] == 1
    assert deployment.versions.count() == 1
    assert f"mallory/{SECRET_NAME}/v1.dill" in bucket()


def test_staff_can_open_the_owners_model_page(deployment, staff):
    response = logged_in(staff).get(f"/models/{deployment.id}/")

    assert response.status_code == 200
    page = response.content.decode()
    assert f"<h1>{SECRET_NAME} " in page
    assert "owned by alice" in page


# --- CSRF ----------------------------------------------------------------------


# Every URL refusing an unsafe request without the token is walked in tests/test_access.py.


def test_posts_with_the_csrf_token_go_through(browser, deployment):
    token = browser.cookies["csrftoken"].value

    response = upload(browser, filename="other.dill")
    assert response.status_code == 201, response.content
    assert response.json()["name"] == "other"
    paused = browser.post(f"/models/{deployment.id}/pause/", {"csrfmiddlewaretoken": token})
    assert paused.status_code == 302
    deployment.refresh_from_db()
    assert deployment.status == Deployment.Status.PAUSED


# --- help ----------------------------------------------------------------------


def test_the_help_page_explains_the_package_keys(alice):
    response = alice.get("/help/")

    assert response.status_code == 200
    page = response.content.decode()
    assert "<h1>Making a model package</h1>" in page
    assert '<td class="mono">features</td>' in page
    assert "save_package" in page


@pytest.mark.parametrize(
    "required, says",
    [
        (True, "On this site a change of champion waits for a staff member of the group "),
        (False, "On this site a change of champion takes effect without approval"),
    ],
)
def test_the_help_page_explains_roles_promotion_rollback_approval_and_split(
    alice, settings, required, says
):
    settings.REQUIRE_APPROVAL, settings.APPROVERS_GROUP = required, "model-risk"

    page = alice.get("/help/").content.decode()

    section = page[page.index('id="roles"') :]
    for term in ("Champion", "Challenger", "Shadow", "Split", "Promote", "Roll back", "Approval"):
        assert f"<dt>{term}</dt>" in section, term
    assert "<code>REQUIRE_APPROVAL</code>" in section and "<code>APPROVERS_GROUP</code>" in section
    assert "<code>scores_shadow</code>" in section  # where a shadow's rows go
    assert says in section
    assert ("<b>model-risk</b>" in section) is required
