"""Storage against a real SeaweedFS S3 server: layout, hashes, quotas, deletion, no half state."""

import hashlib
import io
import os

import pytest
from django.conf import settings

from deploy.services import free_port
from scoring.models import Deployment, PackageVersion, Quota
from scoring.packages import deployments, storage
from scoring.packages.deployments import DeployError
from tests.factories import packages

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("bucket")]


def package_bytes(seed: int = 0) -> bytes:
    return packages.dumps(packages.function_package(meta={"seed": seed}))


def deploy(user, data: bytes, name="churn", filename="churn.dill", **settings_):
    return deployments.deploy(user, io.BytesIO(data), filename, len(data), name=name, **settings_)


def test_it_stores_a_package_under_the_owners_folder_with_its_hash(owner, bucket):
    data = package_bytes()
    version = deploy(owner, data, name="Churn Model", filename="whatever.dill")

    assert version.key == "alice/churn-model/v1.dill"
    assert bucket() == ["alice/churn-model/v1.dill"]
    assert version.size == len(data)
    assert version.sha256 == hashlib.sha256(data).hexdigest()
    stored = storage.client().get_object(Bucket=settings.MODELS_BUCKET, Key=version.key)
    assert stored["Body"].read() == data
    assert stored["Metadata"]["sha256"] == version.sha256


def test_same_name_makes_a_new_version_and_keeps_the_old(owner, bucket):
    first = deploy(owner, package_bytes(1))
    second = deploy(owner, package_bytes(2))

    assert (first.deployment_id, first.number) == (second.deployment_id, 1)
    assert second.number == 2
    assert bucket() == ["alice/churn/v1.dill", "alice/churn/v2.dill"]


def test_the_name_comes_from_the_file_when_the_form_gives_none(owner):
    version = deployments.deploy(owner, io.BytesIO(package_bytes()), "Retention_v3.dill", 10)
    assert version.deployment.name == "Retention_v3"


def test_a_duplicate_of_the_current_version_is_refused(owner):
    deploy(owner, package_bytes())
    with pytest.raises(DeployError, match="same as the current version v1"):
        deploy(owner, package_bytes())
    assert PackageVersion.objects.count() == 1


def test_a_download_checks_the_hash(owner, tmp_path):
    version = deploy(owner, package_bytes())
    with open(tmp_path / "ok.dill", "wb") as out:
        storage.download(version.key, version.sha256, out)
    assert (tmp_path / "ok.dill").read_bytes() == package_bytes()

    storage.client().put_object(
        Bucket=settings.MODELS_BUCKET, Key=version.key, Body=b"\x80\x04tampered"
    )
    with (
        open(tmp_path / "bad.dill", "wb") as out,
        pytest.raises(storage.StorageError, match="does not match its sha256"),
    ):
        storage.download(version.key, version.sha256, out)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "the file is empty"),
        (b"PK\x03\x04 a zip file", "this file is not a pickle"),
        (b"\x80\x09", "this file is not a pickle"),
    ],
)
def test_a_file_that_is_not_a_pickle_is_refused_before_anything_is_stored(
    owner, data, message, bucket
):
    with pytest.raises(DeployError, match=message):
        deploy(owner, data)
    assert bucket() == []
    assert not Deployment.objects.exists()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("name", "../../etc/passwd", "must not contain '/'"),
        ("name", "..", "must not contain"),
        ("name", "   ", "name must not be empty"),
        ("email", "ops@bank.example\r\nBcc: everyone@evil.example", "not a single valid address"),
        ("schedule", "every day", "neither a preset"),
        ("schedule", "0 25 * * *", "not a valid cron expression"),
        ("timezone", "Mars/Olympus", "unknown time zone"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_stored(owner, field, value, message, bucket):
    kwargs = {"name": "churn", field: value}
    with pytest.raises(DeployError, match=message):
        deployments.deploy(owner, io.BytesIO(package_bytes()), "churn.dill", 10, **kwargs)
    assert bucket() == []
    assert not Deployment.objects.exists()


def test_the_active_model_quota_is_checked_before_storing(owner, bucket):
    Quota.objects.create(user=owner, active_models=2)
    deploy(owner, package_bytes(1), name="a")
    deploy(owner, package_bytes(2), name="b")

    with pytest.raises(DeployError, match="you have 2 of 2 active models"):
        deploy(owner, package_bytes(3), name="c")
    assert bucket() == ["alice/a/v1.dill", "alice/b/v1.dill"]
    # A new version of an existing model is not a new model.
    deploy(owner, package_bytes(4), name="a")
    # Pausing frees a slot.
    deployments.update(Deployment.objects.get(name="b"), status=Deployment.Status.PAUSED)
    deploy(owner, package_bytes(5), name="c")
    with pytest.raises(DeployError, match="you have 2 of 2 active models"):
        deployments.update(Deployment.objects.get(name="b"), status=Deployment.Status.ACTIVE)


def test_the_byte_quota_and_the_package_size_limit_are_checked_before_storing(
    owner, settings, bucket
):
    data = package_bytes()
    Quota.objects.create(user=owner, bytes=len(data) * 2 - 1)
    deploy(owner, data, name="a")
    with pytest.raises(DeployError, match="would bring your storage to"):
        deploy(owner, package_bytes(9), name="b")

    settings.MAX_PACKAGE_BYTES = 100
    with pytest.raises(DeployError, match="the largest allowed is 100 B"):
        deploy(owner, data, name="c")
    assert bucket() == ["alice/a/v1.dill"]


def test_a_failed_upload_leaves_no_object_and_no_row(owner, settings):
    settings.S3_ENDPOINT_URL = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    storage.client.cache_clear()
    try:
        with pytest.raises(storage.StorageError, match="nothing was stored"):
            deploy(owner, package_bytes())
    finally:
        storage.client.cache_clear()
    assert not Deployment.objects.exists()
    assert not PackageVersion.objects.exists()


def test_a_failure_after_the_upload_removes_the_object(owner, monkeypatch, bucket):
    def broken_create(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(PackageVersion.objects, "create", broken_create)
    with pytest.raises(RuntimeError):
        deploy(owner, package_bytes())
    assert bucket() == []
    assert not Deployment.objects.exists()


def test_deleting_a_deployment_removes_its_objects_and_rows(owner, outsider, bucket):
    deploy(owner, package_bytes(1))
    version = deploy(owner, package_bytes(2))
    deploy(outsider, package_bytes(3))

    deployments.delete(version.deployment)

    assert bucket() == ["mallory/churn/v1.dill"]
    assert not PackageVersion.objects.filter(deployment__owner=owner).exists()


def test_a_part_upload_sends_parts_while_written_and_appears_whole_at_close(bucket):
    data = os.urandom(storage.PART_BYTES * 2 + 12345)
    key = f"{settings.MODELS_BUCKET}/streamed/scores.parquet"
    upload = storage.PartUpload(key)
    for start in range(0, len(data), 1 << 20):
        upload.write(data[start : start + (1 << 20)])
    # Two full parts went up while writing; the object is not there until the close.
    assert len(upload.sent) == 2 and len(upload.buffer) < storage.PART_BYTES
    assert bucket("streamed/") == []
    upload.close()
    assert upload.tell() == len(data)
    body = storage.client().get_object(Bucket=settings.MODELS_BUCKET, Key="streamed/scores.parquet")
    assert body["Body"].read() == data


def test_an_aborted_part_upload_leaves_no_object_and_no_pending_upload(bucket):
    upload = storage.PartUpload(f"{settings.MODELS_BUCKET}/streamed/failed.parquet")
    upload.write(os.urandom(storage.PART_BYTES + 1))
    upload.abort()
    assert bucket("streamed/") == []
    pending = storage.client().list_multipart_uploads(
        Bucket=settings.MODELS_BUCKET, Prefix="streamed/"
    )
    assert pending.get("Uploads", []) == []
