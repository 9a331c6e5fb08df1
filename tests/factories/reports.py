"""The rows a report is made of: a model with a valid version 1, a run of a batch at a
given light (or failed, or retrying) with a quality dict as the checks write it."""

from datetime import UTC, date, datetime, timedelta

from scoring.models import Batch, Deployment, PackageVersion, ScoringRun, Team
from scoring.packages.storage import package_key
from tests.factories.runs import histogram, with_champions

DAY = date(2026, 11, 23)
SLICE = date(2026, 11, 22)
NOW = datetime(2026, 11, 23, 6, 30, tzinfo=UTC)


def quality(status: str = "ok", **changes) -> dict:
    """A quality dict as scoring.quality.metrics writes it, against the previous run."""
    drift = {"ok": (0.012, 0.51), "warning": (0.14, 0.62), "alert": (0.312, 0.71)}[status]
    features = {
        "ok": [{"name": "age", "psi": 0.004, "status": "ok"}],
        "warning": [{"name": "tenure", "psi": 0.12, "status": "warning"}],
        "alert": [
            {"name": "income", "psi": 0.41, "status": "alert"},
            {"name": "age", "psi": 0.18, "status": "warning"},
        ],
    }[status]
    return {
        "status": status,
        "baseline": {"kind": "run", "run_id": 12, "date": "2026-11-22", "rows": 98000},
        "rows": 100000,
        "baseline_rows": 98000,
        "rows_change": 0.0204,
        "rows_status": "ok",
        "psi": drift[0],
        "psi_status": status,
        "adversarial_auc": drift[1],
        "adversarial_auc_stderr": 0.006,
        "adversarial_status": status,
        "adversarial_rows": 5000,
        "features": features,
        "missing_share": 0.0,
        "missing_status": "ok",
        "constant": False,
        "constant_status": "ok",
        "histogram": histogram({"ok": 0.0, "warning": 0.1, "alert": 0.25}[status]),
        "thresholds": {
            "psi_warn": 0.1,
            "psi_alert": 0.25,
            "adversarial_warn": 0.6,
            "adversarial_alert": 0.65,
        },
        "seconds": 0.4,
        **changes,
    }


def deployment(user, name: str, email: str | None = None) -> Deployment:
    made = Deployment.objects.create(
        owner=user,
        name=name,
        slug=Deployment.slug_for(name),
        email=user.email if email is None else email,
    )
    valid_version(made, 1)
    return with_champions([made])[0]


def team_deployment(team: Team, name: str, email: str = "") -> Deployment:
    """A team's model, as an upload to the team makes it: no address of its own."""
    made = Deployment.objects.create(
        team=team, name=name, slug=Deployment.slug_for(name), email=email
    )
    valid_version(made, 1)
    return with_champions([made])[0]


def valid_version(model: Deployment, number: int) -> PackageVersion:
    return PackageVersion.objects.create(
        deployment=model,
        number=number,
        file=package_key(model, number),
        filename=f"{model.slug}-v{number}.dill" if number > 1 else f"{model.slug}.dill",
        size=2048,
        sha256=str(number - 1) * 64,
        state=PackageVersion.State.VALID,
    )


def as_challenger(champion_run: ScoringRun) -> ScoringRun:
    """A copy of the champion's run, by a valid v2 of its model dropped as the challenger."""
    version = valid_version(champion_run.deployment, 2)
    champion_run.pk, champion_run.version, champion_run.role = None, version, "challenger"
    champion_run.save()
    return champion_run


def run(batch: Batch, deployment_: Deployment, status: str = "ok", **fields) -> ScoringRun:
    """A run of the batch: succeeded with quality at `status`, or failed/retrying."""
    started = NOW - timedelta(minutes=3)
    values = {
        "deployment": deployment_,
        "version": deployment_.versions.get(),
        "batch": batch,
        "date": DAY,
        "slice_date": SLICE,
        "status": ScoringRun.Status.SUCCEEDED,
        "attempts": 1,
        "rows": 100000,
        "started_at": started,
        "finished_at": started + timedelta(seconds=42.5),
    }
    if status in ("failed", "retrying"):
        values.update(status=status, rows=None, error="ValueError: column 'income' is missing")
        if status == "retrying":
            values["next_attempt_at"] = NOW + timedelta(minutes=5)
    else:
        values.update(quality=quality(status), quality_status=status)
    values.update(fields)
    return ScoringRun.objects.create(**values)
