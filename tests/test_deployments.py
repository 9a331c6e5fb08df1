"""Deploying through the real path (S3, a Celery worker, a sandbox): which settings a
package follows, which models count against the quota, and names that collide."""

import io

import pytest
from django.test import override_settings

from scoring.models import Deployment, PackageVersion, Quota, ScoringRun
from scoring.packages import deployments, quotas
from scoring.packages.deployments import DeployError
from scoring.quality import assessment
from tests.factories import packages

pytestmark = pytest.mark.django_db(transaction=True)


def deploy_bytes(user, data: bytes, name: str) -> PackageVersion:
    return deployments.deploy(user, io.BytesIO(data), f"{name}.dill", len(data), name=name)


def broken_bytes(seed: int) -> bytes:
    """A package the sandbox refuses: its model has no way to score."""
    return packages.dumps({"model": f"not a model {seed}", "features": ["age"]})


# --- the site's settings are the defaults (defect 1) -------------------------------


def test_a_package_that_sets_no_params_follows_the_sites_settings(worker, owner, validated, client):
    version = validated(deploy_bytes(owner, packages.dumps(packages.function_package()), "spend"))
    assert version.state == PackageVersion.State.VALID, version.message
    # Validation writes no default into the package: only the method it resolved.
    assert version.package["params"] == {"method": "__call__"}
    run = ScoringRun(deployment=version.deployment, version=version, date="2026-12-01")

    with override_settings(PSI_WARN=0.05, PSI_ALERT=0.5, CHUNK_ROWS=25_000):
        assert assessment.thresholds(run) == {
            "psi_warn": 0.05,
            "psi_alert": 0.5,
            "adversarial_warn": 0.6,
            "adversarial_alert": 0.65,
        }
        client.force_login(owner)
        page = client.get(f"/models/{version.deployment_id}/").content.decode()
    assert (
        '<dt class="mono">psi_warn</dt><dd>0.05 <span class="note">· site setting PSI_WARN' in page
    )
    assert (
        '<dt class="mono">chunk_rows</dt><dd>25000 <span class="note">· site setting CHUNK_ROWS'
        in page
    )
    assert '<dt class="mono">max_attempts</dt><dd>3 <span class="note">· default' in page
    assert '<dt class="mono">method</dt><dd>__call__ <span class="note">· package' in page


def test_a_packages_own_params_override_the_site(worker, owner, validated):
    package = packages.function_package(params={"psi_warn": 0.2, "max_attempts": 5})
    version = validated(deploy_bytes(owner, packages.dumps(package), "spend"))
    run = ScoringRun(deployment=version.deployment, version=version, date="2026-12-01")

    with override_settings(PSI_WARN=0.05, PSI_ALERT=0.5):
        assert assessment.thresholds(run)["psi_warn"] == 0.2
        assert assessment.thresholds(run)["psi_alert"] == 0.5
    assert version.package["params"]["max_attempts"] == 5


# --- broken uploads do not eat the quota (defect 5) --------------------------------


def test_models_that_cannot_score_do_not_count_against_the_quota(worker, owner, validated):
    Quota.objects.create(user=owner, active_models=2)
    for seed in range(3):
        broken = validated(deploy_bytes(owner, broken_bytes(seed), f"broken-{seed}"))
        assert broken.state == PackageVersion.State.INVALID

    good = validated(deploy_bytes(owner, packages.dumps(packages.function_package()), "spend"))

    assert good.state == PackageVersion.State.VALID, good.message
    usage = quotas.usage(owner)
    assert (usage["models"], usage["uncounted_models"]) == (1, 3)
    assert usage["text"].startswith("1 of 2 active models (3 that cannot score not counted), ")


def test_fixing_a_broken_model_counts_it_again(worker, owner, validated):
    Quota.objects.create(user=owner, active_models=1)
    validated(deploy_bytes(owner, broken_bytes(0), "churn"))
    validated(deploy_bytes(owner, packages.dumps(packages.function_package()), "spend"))

    # A valid version of the broken model would be a second model that counts: refused.
    with pytest.raises(DeployError, match="you have 1 of 1 active models"):
        deploy_bytes(owner, packages.dumps(packages.function_package(meta={"v": 2})), "churn")
    assert Deployment.objects.get(name="churn").versions.count() == 1


# --- names that slug alike (defect 6) ----------------------------------------------


def test_a_name_that_slugs_like_another_model_is_refused(bucket, owner):
    first = deploy_bytes(owner, packages.dumps(packages.function_package()), "churn")

    with pytest.raises(DeployError) as refused:
        data = packages.dumps(packages.function_package(meta={"v": 2}))
        deployments.deploy(owner, io.BytesIO(data), "rocket.dill", len(data), name="churn 🚀")

    assert str(refused.value) == (
        "the name 'churn 🚀' is too close to your model 'churn': both are stored as 'churn'. "
        "Use 'churn' to add a version to it, or a name that differs in its letters or digits"
    )
    assert list(PackageVersion.objects.values_list("id", flat=True)) == [first.id]
    assert bucket() == ["alice/churn/v1.dill"]


def test_the_same_name_still_makes_a_new_version(bucket, owner):
    deploy_bytes(owner, packages.dumps(packages.function_package()), "Churn")
    second = deploy_bytes(owner, packages.dumps(packages.function_package(meta={"v": 2})), "Churn")

    assert second.number == 2
    assert bucket() == ["alice/churn/v1.dill", "alice/churn/v2.dill"]
