"""What the web-page tests share: a package file as the drop zone sends it, an upload, a
logged-in client, and a snapshot of a model to see that nothing changed."""

import io

from django.test import Client

from scoring.models import Deployment
from tests.factories import packages

SECRET_NAME = "alice-churn-q3"


def package_file(data: bytes | None = None, filename: str = "spend.dill") -> io.BytesIO:
    file = io.BytesIO(packages.dumps(packages.function_package()) if data is None else data)
    file.name = filename
    return file


def upload(client, data: bytes | None = None, filename: str = "spend.dill", **fields):
    """Post to the drop zone endpoint as the page's form does: the CSRF token (if any) first."""
    token = client.cookies.get("csrftoken")
    form = {"csrfmiddlewaretoken": token.value} if token else {}
    return client.post("/models/upload/", {**form, "file": package_file(data, filename), **fields})


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def snapshot(deployment_id: int) -> tuple:
    deployment = Deployment.objects.get(id=deployment_id)
    versions = list(deployment.versions.values_list("number", "sha256"))
    return (
        deployment.name,
        deployment.status,
        deployment.email,
        deployment.schedule,
        deployment.timezone,
        deployment.next_run_at,
        versions,
    )
