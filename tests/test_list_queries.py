"""The lists of models, the API's and "My models", ask the database a fixed number of times
however many teams and models a user sees, and show each model's latest version whole."""

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.renderers import JSONRenderer

from portal.api.serializers import DeploymentSerializer
from portal.views import deployments_for
from scoring.models import Deployment, Membership, PackageVersion, Team
from tests.factories.cast import api_client_for, session
from tests.factories.runs import FEATURES, make_runs

pytestmark = pytest.mark.django_db

LISTS = ["/api/v1/models/?limit=50", "/"]
PACKAGE = {"features": FEATURES, "method": "predict_proba", "meta": {"gini_oot": 0.4}}


def make_team_models(user, teams: int, per_team: int, start: int = 0) -> list[Deployment]:
    """`teams` teams with `user` a member, each with `per_team` models of two valid
    versions, the second the champion."""
    made = Team.objects.bulk_create(
        Team(name=f"Team {start + i}", slug=f"team-{start + i}") for i in range(teams)
    )
    Membership.objects.bulk_create(Membership(team=t, user=user, role="member") for t in made)
    deployments = Deployment.objects.bulk_create(
        Deployment(team=team, name=f"churn-{i:03d}", slug=f"churn-{i:03d}")
        for team in made
        for i in range(per_team)
    )
    versions = PackageVersion.objects.bulk_create(
        PackageVersion(
            deployment=d,
            number=n,
            file=f"teams/{d.team.slug}/{d.slug}/v{n}.dill",
            filename=f"{d.slug}.dill",
            size=20_000,
            sha256="0" * 64,
            state=PackageVersion.State.VALID,
            package=PACKAGE,
        )
        for d in deployments
        for n in (1, 2)
    )
    for deployment, version in zip(deployments, versions[1::2], strict=True):
        deployment.champion = version
    Deployment.objects.bulk_update(deployments, ["champion"])
    return deployments


@pytest.mark.parametrize("path", LISTS)
def test_a_list_asks_as_many_queries_for_5_teams_of_200_models_as_for_1_team_of_2(
    path, owner, django_assert_num_queries
):
    client = api_client_for(owner) if path.startswith("/api/") else session(owner)
    first = make_team_models(owner, 1, 2)
    make_runs(first, 2)
    assert client.get(path).status_code == 200  # templates load once, not in the count
    with CaptureQueriesContext(connection) as few:
        assert client.get(path).status_code == 200

    Deployment.objects.filter(id__in=[d.id for d in first]).delete()
    make_runs(make_team_models(owner, 5, 200, start=1), 2)

    with django_assert_num_queries(len(few)):
        response = client.get(path)
    assert response.status_code == 200
    if path.startswith("/api/"):
        assert (response.json()["count"], len(response.json()["results"])) == (1000, 50)


def test_the_api_list_shows_each_models_latest_version_with_its_package(owner):
    (model,) = make_team_models(owner, 1, 1)
    newest = PackageVersion.objects.create(
        deployment=model,
        number=3,
        file=f"teams/team-0/{model.slug}/v3.dill",
        filename="churn-v3.dill",
        size=30_000,
        sha256="3" * 64,
        state=PackageVersion.State.INVALID,
        message="features: missing column plan",
        package=PACKAGE,
    )
    model.challenger = newest
    model.save()

    (listed,) = api_client_for(owner).get("/api/v1/models/?limit=50").json()["results"]
    assert (listed["owner"], listed["team"]) == ("team/team-0", "team-0")
    assert (listed["current_version"], listed["challenger_version"]) == (2, 3)
    latest = listed["latest_version"]
    assert (latest["number"], latest["sha256"], latest["package"]) == (3, "3" * 64, PACKAGE)
    assert latest["validation"] == {"state": "invalid", "message": newest.message}


def test_the_api_list_shows_each_model_as_the_serializer_does(owner, django_user_model):
    """portal.api.model_list reads rows, not instances: its shape is DeploymentSerializer's."""
    team_model, _ = make_team_models(owner, 1, 2)
    team_model.challenger = team_model.versions.get(number=1)
    team_model.challenger_share = 0.2
    team_model.save()
    Deployment.objects.create(owner=owner, name="no versions yet", slug="no-versions-yet")
    pending = Deployment.objects.create(
        owner=owner, name="pending", slug="pending", timezone="Europe/Moscow", status="paused"
    )
    PackageVersion.objects.create(
        deployment=pending, number=1, file="alice/pending/v1.dill", size=1, sha256="1" * 64
    )
    PackageVersion.objects.filter(deployment=pending).update(package={"név": ["ünïcode"]})
    Deployment.objects.create(
        owner=django_user_model.objects.create(username="bob"), name="not seen", slug="not-seen"
    )

    listed = api_client_for(owner).get("/api/v1/models/").json()
    expected = DeploymentSerializer(deployments_for(owner).order_by("name", "id"), many=True)
    assert listed == json.loads(JSONRenderer().render(expected.data))
    assert [m["name"] for m in listed] == ["churn-000", "churn-001", "no versions yet", "pending"]
