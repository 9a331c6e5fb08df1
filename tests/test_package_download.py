"""A package version downloaded by its owner, from the page and the API: the exact bytes
uploaded, streamed from the real S3 server, with their sha256."""

import base64
import hashlib

import pytest

from scoring.models import PackageVersion
from scoring.packages import storage
from tests.factories import packages
from tests.factories.web import package_file

pytestmark = pytest.mark.django_db(transaction=True)


def uploaded(api) -> tuple[dict, bytes]:
    data = packages.dumps(packages.catboost_package())
    response = api.post("/api/v1/models/", {"file": package_file(data, "churn.dill")})
    assert response.status_code == 201, response.content
    return response.json(), data


def body(response) -> bytes:
    assert response.streaming  # read from S3 as it is sent, never whole in memory
    return b"".join(response.streaming_content)


def test_the_api_gives_the_exact_bytes_with_their_sha256(bucket, api):
    model, data = uploaded(api)
    sha256 = hashlib.sha256(data).hexdigest()

    response = api.get(f"/api/v1/models/{model['id']}/versions/1/download/")

    assert response.status_code == 200
    assert body(response) == data
    assert response["X-Package-SHA256"] == sha256 == model["latest_version"]["sha256"]
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert response["Repr-Digest"] == f"sha-256=:{digest}:"
    assert response["Content-Length"] == str(len(data))
    assert response["Content-Disposition"] == 'attachment; filename="churn-v1.dill"'


def test_the_page_links_each_version_to_its_file_and_shows_its_sha256(bucket, api, alice):
    model, data = uploaded(api)
    page = alice.get(f"/models/{model['id']}/").content.decode()
    link = f"/models/{model['id']}/versions/1/download/"
    assert link in page
    assert hashlib.sha256(data).hexdigest() in page

    response = alice.get(link)
    assert body(response) == data
    assert response["X-Package-SHA256"] == hashlib.sha256(data).hexdigest()


def test_a_missing_version_is_a_404_and_a_changed_object_never_downloads_whole(
    bucket, api, settings
):
    model, data = uploaded(api)
    assert api.get(f"/api/v1/models/{model['id']}/versions/2/download/").status_code == 404

    version = PackageVersion.objects.get()
    storage.client().put_object(
        Bucket=settings.MODELS_BUCKET,
        Key=version.file.name,
        Body=data[:100] + bytes([data[100] ^ 1]) + data[101:],  # one bit changed
    )
    response = api.get(f"/api/v1/models/{model['id']}/versions/1/download/")
    with pytest.raises(storage.StorageError, match="does not match its sha256"):
        body(response)


def test_storage_down_is_a_503_before_any_byte(bucket, api, settings):
    model, _ = uploaded(api)
    settings.MODELS_BUCKET = "no-such-bucket"

    response = api.get(f"/api/v1/models/{model['id']}/versions/1/download/")

    assert response.status_code == 503
    assert "could not read" in response.json()["detail"]
