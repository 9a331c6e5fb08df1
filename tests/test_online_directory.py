"""What a serving process reads of the models every second: every model's name and switch,
and the package (most of the bytes) only of an online model's versions it does not know."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token

from scoring.models import Deployment
from scoring.online.directory import Directory, read_caller, read_models
from scoring.packages import teams
from tests import flows
from tests.factories import packages

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("bucket")]


def test_only_the_online_models_versions_are_read_and_once(owner, worker, validated):
    on = flows.deploy(owner, packages.function_package(), "on", validated)
    off = flows.deploy(owner, packages.function_package(), "off", validated)
    Deployment.objects.filter(id=on.id).update(online=True)

    models, versions = read_models({})
    assert models[on.id].champion.number == 1 and models[off.id].online is False
    assert set(versions) == {on.champion_id} and models[off.id].champion is None
    assert models[on.id].champion.inputs.features == packages.function_package()["features"]

    with CaptureQueriesContext(connection) as queries:
        again, kept = read_models(versions)
    assert len(queries) == 1, "the versions known are not read again"
    assert kept == versions and again[on.id].champion is versions[on.champion_id]

    Deployment.objects.filter(id=on.id).update(online=False)
    Deployment.objects.filter(id=off.id).update(online=True)
    switched, now_known = read_models(kept)
    assert set(now_known) == {off.champion_id}, "a model switched off lets its versions go"
    assert switched[off.id].champion.number == 1


def test_a_caller_finds_their_own_model_first_then_their_one_teams_by_name(owner, outsider):
    """The V2 endpoint names a model: the caller's own, else the one of their teams that has
    that name (a name two of their teams use is asked by id); another's is never found."""
    retail, cards = teams.make_team("retail", owner), teams.make_team("cards", owner)
    for name, team, person in [
        ("churn", None, owner),
        ("churn", retail, None),
        ("spend", retail, None),
        ("limits", retail, None),
        ("limits", cards, None),
        ("hers", None, outsider),
    ]:
        Deployment.objects.create(name=name, slug=name, owner=person, team=team)
    directory = Directory()
    directory.refresh()
    alice = read_caller(f"Token {Token.objects.create(user=owner).key}")
    mallory = read_caller(f"Token {Token.objects.create(user=outsider).key}")
    assert alice.teams == {retail.id, cards.id}

    assert directory.find(alice, "churn").team_id is None  # her own
    assert directory.find(alice, "spend").team_id == retail.id
    assert directory.find(alice, "limits") is None  # two of her teams: by id
    limits = Deployment.objects.get(team=cards, name="limits")
    assert directory.find(alice, str(limits.id)).id == limits.id
    assert directory.find(alice, "hers") is None
    assert directory.find(mallory, "spend") is None
    assert directory.find(mallory, str(limits.id)) is None
