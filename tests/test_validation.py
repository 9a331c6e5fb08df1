"""Validation of uploaded packages through the real path: S3, Redis, a Celery worker, a sandbox."""

import io

import pytest

from scoring.models import Deployment, PackageVersion, Quota
from scoring.packages import deployments
from tests.factories import packages

pytestmark = pytest.mark.django_db(transaction=True)


def deploy_bytes(user, data: bytes, name: str):
    return deployments.deploy(user, io.BytesIO(data), f"{name}.dill", len(data), name=name)


@pytest.mark.parametrize(
    "make, method",
    [
        (packages.catboost_package, "predict_proba"),
        (packages.sklearn_package, "predict_proba"),
        (packages.function_package, "__call__"),
        (packages.lightgbm_package, "predict_proba"),
        (packages.lightgbm_booster_package, "predict"),
        (packages.xgboost_package, "predict_proba"),
        (packages.xgboost_booster_package, "predict"),
    ],
)
def test_a_good_package_becomes_valid_with_what_it_declares(worker, owner, validated, make, method):
    package = make()
    version = validated(deploy_bytes(owner, packages.dumps(package), make.__name__))

    assert version.state == PackageVersion.State.VALID, version.message
    assert version.package["features"] == package["features"]
    assert version.package["method"] == method
    assert version.message.startswith("smoke test: scored 200 rows of slice")


def test_package_email_and_schedule_apply_where_the_form_gave_none(worker, owner, validated):
    version = validated(
        deploy_bytes(
            owner, packages.dumps(packages.sklearn_package(email="team@bank.example")), "m"
        )
    )

    version.deployment.refresh_from_db()
    assert version.state == PackageVersion.State.VALID
    assert version.deployment.schedule == "weekly"
    assert version.deployment.email == "team@bank.example"


def test_a_new_version_never_overrides_the_settings_the_user_chose(worker, owner, validated):
    validated(deploy_bytes(owner, packages.dumps(packages.function_package()), "spend"))
    deployment = Deployment.objects.get(name="spend")
    deployments.update(deployment, schedule="30 5 * * 1-5", email="risk@bank.example")

    package = packages.function_package(schedule="monthly", email="someone@else.example")
    version = validated(deploy_bytes(owner, packages.dumps(package), "spend"))

    deployment.refresh_from_db()
    assert (version.number, version.state) == (2, PackageVersion.State.VALID)
    assert (deployment.schedule, deployment.email) == ("30 5 * * 1-5", "risk@bank.example")


def test_unknown_keys_are_kept_and_shown(worker, owner, validated):
    package = packages.function_package(owner_team="risk", format=2)
    version = validated(deploy_bytes(owner, packages.dumps(package), "future"))

    assert version.state == PackageVersion.State.VALID
    assert version.package["extra_keys"] == {"owner_team": "'risk'"}
    assert "format 2 is newer" in version.package["warnings"][0]


def test_every_bad_package_ends_invalid_with_a_clear_message(worker, owner, validated, tmp_path):
    Quota.objects.create(user=owner, active_models=100)
    bad = packages.bad_packages(tmp_path)
    versions = {
        name: deploy_bytes(owner, data, f"bad-{i}")
        for i, (name, (data, _)) in enumerate(bad.items())
    }

    for name, version in versions.items():
        validated(version, timeout=120)
        expected = bad[name][1]
        assert version.state == PackageVersion.State.INVALID, f"{name}: {version.message}"
        assert expected in version.message, f"{name}: {version.message!r} lacks {expected!r}"


def test_tick_sends_again_a_validation_whose_message_was_lost(worker, owner, validated, bucket):
    """The database is the record: a pending version without a message in Redis is not forgotten."""
    from datetime import timedelta

    from django.utils import timezone

    from scoring.models import Deployment
    from scoring.packages import storage
    from scoring.tasks import tick

    data = packages.dumps(packages.function_package())
    deployment = Deployment.objects.create(
        owner=owner, name="lost", slug="lost", email="a@b.example"
    )
    key = storage.package_key(deployment, 1)
    storage.upload(io.BytesIO(data), key, storage.sha256_of(io.BytesIO(data)))
    version = PackageVersion.objects.create(
        deployment=deployment,
        number=1,
        file=key,
        filename="lost.dill",
        size=len(data),
        sha256=storage.sha256_of(io.BytesIO(data)),
        validation_queued_at=timezone.now() - timedelta(hours=1),
    )

    tick()

    assert validated(version).state == PackageVersion.State.VALID
