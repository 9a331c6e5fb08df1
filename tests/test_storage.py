"""Storage against a real SeaweedFS S3 server: layout, hashes, quotas, deletion, no half state."""

import hashlib
import io
import os
import tracemalloc

import pytest
from boto3.s3.transfer import S3Transfer
from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.uploadedfile import TemporaryUploadedFile
from django.core.management import call_command
from django.test import override_settings

from deploy.services import free_port
from scoring.engine import part_upload
from scoring.models import Deployment, PackageVersion, Quota
from scoring.packages import deployments, storage
from scoring.packages.deployments import DeployError
from tests.factories import packages

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("bucket")]


def package_bytes(seed: int = 0) -> bytes:
    return packages.dumps(packages.function_package(meta={"seed": seed}))


def deploy(user, data: bytes, name="churn", filename="churn.dill", **settings_):
    return deployments.deploy(user, io.BytesIO(data), filename, len(data), name=name, **settings_)


def uploaded_file(data: bytes, name: str = "churn.dill") -> TemporaryUploadedFile:
    """What the upload handler hands the views: the package spooled to a temporary file."""
    file = TemporaryUploadedFile(name, "text/x-python", len(data), None)
    file.write(data)
    file.seek(0)
    return file


def test_it_stores_a_package_under_the_owners_folder_with_its_hash(owner, bucket):
    data = package_bytes()
    version = deploy(owner, data, name="Churn Model", filename="whatever.dill")

    assert version.file.name == "alice/churn-model/v1.dill"
    assert bucket() == ["alice/churn-model/v1.dill"]
    assert version.size == len(data)
    assert version.sha256 == hashlib.sha256(data).hexdigest()
    stored = storage.client().get_object(Bucket=settings.MODELS_BUCKET, Key=version.file.name)
    assert stored["Body"].read() == data
    assert stored["Metadata"]["sha256"] == version.sha256
    assert stored["ContentType"] == "application/octet-stream"


def test_a_version_file_is_its_object_through_the_package_storage(owner):
    data = package_bytes()
    version = PackageVersion.objects.get(id=deploy(owner, data).id)

    assert version.file.storage is storage.packages()
    assert version.file.storage.bucket_name == settings.MODELS_BUCKET
    assert version.file.storage.exists(version.file.name)
    assert version.file.size == len(data)
    with version.file.open() as package:
        assert package.read() == data


def test_an_upload_goes_from_the_temporary_files_path_in_constant_memory(
    owner, monkeypatch, bucket
):
    """From a file object boto3 would hold up to ten 8 MB parts of each upload in memory."""
    data = b"\x80\x04" + os.urandom(3 * storage.TRANSFER.multipart_chunksize)  # 4 parts
    file = uploaded_file(data)
    sent_from = []
    upload_file = S3Transfer.upload_file  # where boto3's upload from a path goes

    def spy(transfer, filename, *args, **kwargs):
        sent_from.append(filename)
        return upload_file(transfer, filename, *args, **kwargs)

    monkeypatch.setattr(S3Transfer, "upload_file", spy)
    deploy(owner, package_bytes(1), name="warm-up")  # the connection is made before measuring
    tracemalloc.start()
    try:
        version = deployments.deploy(owner, file, "churn.dill", len(data), name="big")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert sent_from == [file.temporary_file_path()]
    assert peak < 12 * 1024**2, f"the upload held {peak / 1024**2:.0f} MB"
    assert version.file.size == len(data)
    head = storage.client().head_object(Bucket=settings.MODELS_BUCKET, Key=version.file.name)
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_the_key_never_comes_from_the_uploaded_files_name(owner, bucket):
    file = uploaded_file(package_bytes(), name="../../etc/v1 (copy).dill")
    version = deployments.deploy(owner, file, file.name, file.size, name="churn")

    assert version.file.name == "alice/churn/v1.dill" and bucket() == [version.file.name]
    assert version.filename == "v1 (copy).dill"


def test_the_storage_keeps_a_key_as_it_is_or_refuses_it(bucket):
    packages = storage.packages()
    storage.upload(io.BytesIO(b"\x80\x04old"), "alice/churn/v1.dill", "old")
    # A key that has an object (a leftover of a failed delete) is replaced, not renamed.
    assert packages.get_available_name("alice/churn/v1.dill", 400) == "alice/churn/v1.dill"
    storage.upload(io.BytesIO(b"\x80\x04new"), "alice/churn/v1.dill", "new")
    assert bucket() == ["alice/churn/v1.dill"]
    with packages.open("alice/churn/v1.dill") as package:
        assert package.read() == b"\x80\x04new"
    for name in ("alice/../bob/v1.dill", "alice//churn/v1.dill", "a" * 401):
        with pytest.raises(SuspiciousFileOperation):
            packages.get_available_name(name, 400)


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
        storage.download(version.file.name, version.sha256, out)
    assert (tmp_path / "ok.dill").read_bytes() == package_bytes()

    storage.client().put_object(
        Bucket=settings.MODELS_BUCKET, Key=version.file.name, Body=b"\x80\x04tampered"
    )
    with (
        open(tmp_path / "bad.dill", "wb") as out,
        pytest.raises(storage.StorageError, match="does not match its sha256"),
    ):
        storage.download(version.file.name, version.sha256, out)


def test_a_download_of_a_missing_object_says_so(tmp_path, bucket):
    with (
        open(tmp_path / "lost.dill", "wb") as out,
        pytest.raises(storage.StorageError, match="could not read alice/lost/v1.dill"),
    ):
        storage.download("alice/lost/v1.dill", "0" * 64, out)


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
    with pytest.raises(storage.StorageError, match="nothing was stored"):
        deploy(owner, package_bytes())
    assert not Deployment.objects.exists()
    assert not PackageVersion.objects.exists()


def test_an_upload_the_server_refuses_stores_nothing_and_says_so(owner, settings):
    """From a path boto3 wraps a refusal in its own S3UploadFailedError, not a ClientError."""
    settings.S3_SECRET_KEY = "not-the-key"
    with pytest.raises(storage.StorageError, match="nothing was stored"):
        deployments.deploy(owner, uploaded_file(package_bytes()), "churn.dill", 10, name="c")
    assert not Deployment.objects.exists()


def test_the_storage_follows_the_s3_settings_a_test_changes(owner):
    with override_settings(MODELS_BUCKET="elsewhere"):
        assert storage.packages().bucket_name == "elsewhere"
    assert storage.packages().bucket_name == settings.MODELS_BUCKET == "test-models"
    assert storage.packages().exists(deploy(owner, package_bytes()).file.name)


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
    assert not storage.packages().exists(version.file.name)
    assert not PackageVersion.objects.filter(deployment__owner=owner).exists()


# --- buckets ------------------------------------------------------------------------------


def abort_rules(bucket_name: str) -> list[dict]:
    return [
        rule
        for rule in storage.lifecycle_rules(bucket_name)
        if "AbortIncompleteMultipartUpload" in rule
    ]


def test_the_buckets_abort_uploads_left_unfinished(s3_server):
    """ensure_buckets (the session's set-up, as deploy/'s) set the rule on both buckets."""
    for bucket_name in (settings.MODELS_BUCKET, settings.SCORES_BUCKET):
        assert abort_rules(bucket_name) == [storage.ABORT_RULE]


def test_the_bucket_set_up_command_makes_missing_buckets_with_the_rule(settings, s3_server):
    settings.SCORES_BUCKET = "test-set-up"
    out = io.StringIO()
    call_command("ensure_buckets", stdout=out)

    assert abort_rules("test-set-up") == [storage.ABORT_RULE]
    assert out.getvalue().splitlines() == [
        f"{bucket}: ready; unfinished uploads are aborted after 1 day"
        for bucket in ("test-models", "test-set-up")
    ]


def test_the_abort_rule_keeps_the_buckets_other_rules_and_is_set_once(s3_server):
    s3 = storage.client()
    s3.create_bucket(Bucket="test-lifecycle")
    expire = {
        "ID": "expire-tmp",
        "Status": "Enabled",
        "Filter": {"Prefix": "tmp/"},
        "Expiration": {"Days": 3},
    }
    s3.put_bucket_lifecycle_configuration(
        Bucket="test-lifecycle", LifecycleConfiguration={"Rules": [expire]}
    )

    assert storage.abort_unfinished_uploads("test-lifecycle")
    assert storage.abort_unfinished_uploads("test-lifecycle")

    rules = storage.lifecycle_rules("test-lifecycle")
    assert sorted(rule["ID"] for rule in rules) == [
        "dropscore-abort-unfinished-uploads",
        "expire-tmp",
    ]
    assert next(rule for rule in rules if rule["ID"] == "expire-tmp")["Expiration"] == {"Days": 3}


def test_a_refused_abort_rule_is_a_warning_not_a_failure(s3_server, settings, caplog):
    settings.S3_SECRET_KEY = "not-the-key"  # as MinIO refuses the rule, or a key not allowed
    assert not storage.abort_unfinished_uploads(settings.MODELS_BUCKET)
    assert "left to the server's own clean-up" in caplog.text


def test_a_part_upload_sends_parts_while_written_and_appears_whole_at_close(bucket):
    data = os.urandom(part_upload.PART_BYTES * 2 + 12345)
    key = f"{settings.MODELS_BUCKET}/streamed/scores.parquet"
    upload = part_upload.PartUpload(key)
    for start in range(0, len(data), 1 << 20):
        upload.write(data[start : start + (1 << 20)])
    # Two full parts went up while writing; the object is not there until the close.
    assert len(upload.sent) == 2 and len(upload.buffer) < part_upload.PART_BYTES
    assert bucket("streamed/") == []
    upload.close()
    assert upload.tell() == len(data)
    body = storage.client().get_object(Bucket=settings.MODELS_BUCKET, Key="streamed/scores.parquet")
    assert body["Body"].read() == data


def test_an_aborted_part_upload_leaves_no_object_and_no_pending_upload(bucket):
    upload = part_upload.PartUpload(f"{settings.MODELS_BUCKET}/streamed/failed.parquet")
    upload.write(os.urandom(part_upload.PART_BYTES + 1))
    upload.abort()
    assert bucket("streamed/") == []
    pending = storage.client().list_multipart_uploads(
        Bucket=settings.MODELS_BUCKET, Prefix="streamed/"
    )
    assert pending.get("Uploads", []) == []
