"""What a serving process reads of the models every second: every model's name and switch,
and the package (most of the bytes) only of an online model's versions it does not know."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from scoring.models import Deployment
from scoring.online.directory import read_models
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
