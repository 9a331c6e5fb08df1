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


# --- in a real browser (tests/e2e) ---

# How many pixels of a canvas are drawn on (not transparent): 0 means a blank chart.
DRAWN_PIXELS = """(id) => {
    const canvas = document.getElementById(id);
    const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    let drawn = 0;
    for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) drawn += 1;
    return drawn;
}"""


def log_in(page, live_server, username="alice", password="alice-password-123"):
    page.goto(live_server.url)
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_selector("#dropzone")
