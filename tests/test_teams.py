"""Teams as their people use them: making a team, adding a colleague, deploying a team's
model into the team's folder, team quotas, four eyes within the team, and the team's
service tokens (a pipeline deploys, a dashboard reads, a revoked token is refused at once).
Who may open which URL: tests/test_access_roles.py."""

import io

import pytest
from django.contrib.auth.models import User
from rest_framework.test import APIClient

from scoring import record
from scoring.models import ChampionChange, Deployment, Membership, PackageVersion, ServiceToken
from scoring.packages import teams
from tests.factories import packages
from tests.factories.cast import api_client_for, session

pytestmark = [pytest.mark.django_db(transaction=True)]


def package_file(name: str, seed: int = 0) -> io.BytesIO:
    data = packages.dumps({**packages.function_package(), "meta": {"seed": seed}})
    file = io.BytesIO(data)
    file.name = f"{name}.dill"
    return file


@pytest.fixture
def retail(owner, outsider, staff):
    """Alice manages the team retail; Bob is a member, Vera a viewer; Mallory is outside."""
    team = teams.make_team("Retail", owner)
    bob = User.objects.create_user("bob", "bob@bank.example", "bob-password-123")
    vera = User.objects.create_user("vera", "vera@bank.example", "vera-password-123")
    teams.set_role(team, bob, "member")
    teams.set_role(team, vera, "viewer")
    return team


def people(*usernames):
    return [User.objects.get(username=name) for name in usernames]


def test_a_manager_makes_a_team_and_adds_a_colleague_through_the_pages(owner, outsider, db):
    alice = session(owner)
    response = alice.post("/teams/", {"name": "Retail risk"}, follow=True)
    assert "you are its manager" in response.content.decode()
    response = alice.post(
        "/teams/retail-risk/member/", {"username": "mallory", "role": "viewer"}, follow=True
    )
    page = response.content.decode()
    assert "mallory is a viewer of Retail risk" in page
    assert 'data-member="mallory"' in page
    assert Membership.objects.get(user=outsider).role == "viewer"
    # Mallory now sees the team, but may not change it.
    mallory = session(outsider)
    assert mallory.get("/teams/retail-risk/").status_code == 200
    assert (
        mallory.post(
            "/teams/retail-risk/member/", {"username": "mallory", "role": "manager"}
        ).status_code
        == 403
    )
    assert Membership.objects.get(user=outsider).role == "viewer"
    # The last manager cannot leave the team without a manager.
    response = alice.post("/teams/retail-risk/remove/", {"username": "alice"}, follow=True)
    assert "must keep a manager" in response.content.decode()
    assert Membership.objects.filter(user=owner).exists()


def test_a_team_model_lives_in_the_team_folder_and_every_member_sees_it(retail, bucket, owner):
    bob, vera = people("bob", "vera")
    response = api_client_for(bob).post(
        "/api/v1/models/", {"file": package_file("churn"), "team": "retail"}, format="multipart"
    )
    assert response.status_code == 201, response.content
    assert (response.json()["owner"], response.json()["team"]) == ("team/retail", "retail")
    deployment = Deployment.objects.get(id=response.json()["id"])
    assert (deployment.owner, deployment.team) == (None, retail)
    assert deployment.versions.get().file.name == "teams/retail/churn/v1.dill"
    assert bucket() == ["teams/retail/churn/v1.dill"]
    # A personal model of the same name is another model.
    response = api_client_for(bob).post(
        "/api/v1/models/", {"file": package_file("churn", 1)}, format="multipart"
    )
    assert response.status_code == 201, response.content
    assert response.json()["owner"] == "bob"
    for user in (owner, vera):
        names = {m["owner"] for m in api_client_for(user).get("/api/v1/models/").json()}
        assert names == {"team/retail"}, user
    page = session(vera).get("/?owner=retail").content.decode()
    assert "team Retail" in page and "view only" in page


def test_a_viewer_cannot_deploy_and_an_outsider_cannot_name_the_team(retail, bucket, outsider):
    (vera,) = people("vera")
    response = api_client_for(vera).post(
        "/api/v1/models/", {"file": package_file("churn"), "team": "retail"}, format="multipart"
    )
    assert response.status_code == 403
    assert "only a member or manager of the team Retail" in response.json()["detail"]
    response = api_client_for(outsider).post(
        "/api/v1/models/", {"file": package_file("churn"), "team": "retail"}, format="multipart"
    )
    assert response.status_code == 400
    assert response.json()["detail"] == "you are in no team named 'retail'"
    assert not PackageVersion.objects.exists()
    assert bucket() == []


def test_a_team_quota_counts_the_teams_models_and_refuses_before_storing(retail, bucket, owner):
    retail.active_models = 1
    retail.save()
    alice = api_client_for(owner)
    first = alice.post("/api/v1/models/", {"file": package_file("a"), "team": "retail"})
    assert first.status_code == 201, first.content
    own = alice.post("/api/v1/models/", {"file": package_file("own")})  # her own quota
    assert own.status_code == 201, own.content
    second = alice.post("/api/v1/models/", {"file": package_file("b", 1), "team": "retail"})
    assert second.status_code == 400
    assert second.json()["detail"].startswith("the team Retail has 1 of 1 active models")
    assert bucket() == ["alice/own/v1.dill", "teams/retail/a/v1.dill"]


def test_four_eyes_within_the_team(retail, bucket, owner, outsider, settings, worker, validated):
    settings.REQUIRE_APPROVAL = True
    bob, _ = people("bob", "vera")
    carol = User.objects.create_user("carol", "carol@bank.example", "carol-password-123")
    teams.set_role(retail, carol, "manager")
    other = teams.make_team("Cards", outsider)  # Mallory manages another team
    assert other.slug == "cards"
    api = api_client_for(bob)
    first = api.post("/api/v1/models/", {"file": package_file("churn"), "team": "retail"})
    deployment_id = first.json()["id"]
    validated(PackageVersion.objects.get(deployment_id=deployment_id, number=1))
    second = api.post(
        "/api/v1/models/",
        {"file": package_file("churn", 1), "team": "retail", "role": "challenger"},
    )
    assert second.status_code == 201, second.content
    validated(PackageVersion.objects.get(deployment_id=deployment_id, number=2))
    asked = api.post(
        f"/api/v1/models/{deployment_id}/versions/2/promote/", {"reason": "better Gini"}
    )
    assert asked.json()["status"] == "waiting", asked.content
    change = ChampionChange.objects.get()
    approve = f"/api/v1/models/{deployment_id}/changes/{change.id}/approve/"
    assert api.post(approve).status_code == 409  # the asker
    assert api_client_for(outsider).post(approve).status_code == 404  # another team's manager
    # Alice and Carol, the team's managers, are named as the approvers.
    assert "alice, carol" in session(bob).get(f"/models/{deployment_id}/").content.decode()
    done = api_client_for(owner).post(approve)
    assert done.status_code == 200, done.content
    assert done.json()["status"] == "done"
    assert Deployment.objects.get(id=deployment_id).champion.number == 2


def test_a_team_token_deploys_as_itself_reads_or_is_refused_once_revoked(retail, bucket, owner):
    alice = session(owner)
    alice.post("/teams/retail/token/", {"name": "ci-deploy", "role": "member"})
    page = alice.get("/teams/retail/").content.decode()
    key = page.split('<pre id="new-token-key">')[1].split("</pre>")[0]
    assert key not in alice.get("/teams/retail/").content.decode()  # shown once
    alice.post("/teams/retail/token/", {"name": "dashboard", "role": "viewer"})
    reader_key = alice.get("/teams/retail/").content.decode()
    reader_key = reader_key.split('<pre id="new-token-key">')[1].split("</pre>")[0]

    pipeline = APIClient()
    pipeline.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    response = pipeline.post("/api/v1/models/", {"file": package_file("churn")})
    assert response.status_code == 201, response.content  # to its team, unnamed
    assert response.json()["owner"] == "team/retail"
    deployment_id = response.json()["id"]
    entry = record.describe_all(record.history(deployment_id))[-1]
    assert (entry["actor"], entry["via"]) == ("retail/ci-deploy", "api")
    token = ServiceToken.objects.get(name="ci-deploy")
    assert token.last_used_at is not None

    reader = APIClient()
    reader.credentials(HTTP_AUTHORIZATION=f"Token {reader_key}")
    assert reader.get(f"/api/v1/models/{deployment_id}/").status_code == 200
    refused = reader.post("/api/v1/models/", {"file": package_file("other"), "team": "retail"})
    assert refused.status_code == 403
    assert reader.patch(f"/api/v1/models/{deployment_id}/", {"status": "paused"}).status_code == 403
    assert Deployment.objects.get(id=deployment_id).status == "active"
    # The team page lists both, with their last use; a revoked token is refused at once.
    alice.post("/teams/retail/revoke/", {"token": token.id})
    assert pipeline.get("/api/v1/models/").status_code == 401
    listed = alice.get("/teams/retail/").content.decode()
    assert 'data-token="ci-deploy"' in listed and "revoked" in listed


def test_nothing_changes_for_a_person_in_no_team(owner, bucket):
    response = api_client_for(owner).post("/api/v1/models/", {"file": package_file("churn")})
    assert response.status_code == 201
    body = response.json()
    assert (body["owner"], body["team"]) == ("alice", None)
    assert PackageVersion.objects.get().file.name == "alice/churn/v1.dill"
    page = session(owner).get("/").content.decode()
    assert 'name="owner"' not in page  # no owner filter without teams


def test_the_status_page_lists_a_teams_model_with_its_owner(retail, bucket, staff):
    (bob,) = people("bob")
    response = api_client_for(bob).post(
        "/api/v1/models/", {"file": package_file("churn"), "team": "retail"}
    )
    assert response.status_code == 201, response.content
    assert "churn" in session(bob).get("/status/").content.decode()
    page = session(staff).get("/status/").content.decode()  # staff see every owner's
    assert "<td>team/retail</td>" in page
