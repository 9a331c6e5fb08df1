"""Helpers of the tests that drive whole runs through the real worker."""

import io
import time
from datetime import date
from email.header import decode_header, make_header

from scoring import deployments
from scoring.models import ScoringRun
from tests import packages


def deploy(user, package: dict, name: str, settle, **settings_):
    data = packages.dumps(package)
    version = settle(
        deployments.deploy(
            user, io.BytesIO(data), f"{name}.dill", len(data), name=name, **settings_
        )
    )
    assert version.state == "valid", version.message
    return version.deployment


def wait_for_runs(deployment_ids, statuses=("succeeded", "failed"), timeout=90) -> list[ScoringRun]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(
            ScoringRun.objects.filter(deployment_id__in=deployment_ids).select_related("version")
        )
        if found and all(run.status in statuses for run in found):
            return found
        time.sleep(0.3)
    raise AssertionError(f"runs not finished: {[(r.id, r.status, r.error) for r in found]}")


def subject(message) -> str:
    return str(make_header(decode_header(message["Subject"])))


def failure_emails(messages) -> list:
    return [m for m in messages if not subject(m).startswith("[Dropscore]")]


def report_emails(mailbox, day: date, count: int, timeout: float = 20) -> list:
    """The reports of batches for `day`, which go out just after their runs finish."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [
            m for m in mailbox() if subject(m).startswith("[Dropscore]") and f"{day})" in subject(m)
        ]
        if len(found) >= count:
            return found
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} report emails after {timeout} s")
