"""Deployments, versions, runs and quality results built straight in the database.

The dashboard, model and status pages only read these rows, so their tests need no
worker, no S3 and no upload: `make_models` and `make_runs` make 200 models with 20,000 runs
in seconds, `make_fleet` 1,000 models with chosen levels.
"""

import math
import random
from datetime import timedelta

from django.utils import timezone

from scoring.models import Deployment, PackageVersion, ScoringRun
from scoring.quality import levels
from scoring.quality.levels import level, worst

FEATURES = ["age", "tenure_months", "monthly_spend", "region", "plan", "calls", "complaints"]
THRESHOLDS = {
    "psi_warn": 0.1,
    "psi_alert": 0.25,
    "adversarial_warn": 0.6,
    "adversarial_alert": 0.65,
}


def histogram(shift: float = 0.0, baseline: bool = True) -> dict:
    """Shares of 20 bins of [0, 1]: a bump around 0.3, moved right by `shift`."""

    def shares(centre: float) -> list[float]:
        weights = [math.exp(-(((i + 0.5) / 20 - centre) ** 2) / 0.02) for i in range(20)]
        return [w / sum(weights) for w in weights]

    return {
        "edges": [i / 20 for i in range(21)],
        "current": shares(0.3 + shift),
        "baseline": shares(0.3) if baseline else None,
    }


def quality(
    psi: float, auc: float, rows: int = 100_000, baseline_run: ScoringRun | None = None, **extra
) -> dict:
    """A quality dict of the shape scoring.quality.metrics stores."""
    psi_status = level(psi, THRESHOLDS["psi_warn"], THRESHOLDS["psi_alert"])
    auc_status = level(auc, THRESHOLDS["adversarial_warn"], THRESHOLDS["adversarial_alert"])
    features = [
        {"name": name, "psi": round(psi * (1.6 - 0.2 * i), 4)} for i, name in enumerate(FEATURES)
    ]
    for feature in features:
        feature["status"] = level(feature["psi"], THRESHOLDS["psi_warn"], THRESHOLDS["psi_alert"])
    result = {
        "status": worst([psi_status, auc_status]),
        "baseline": (
            {
                "kind": "run",
                "run_id": baseline_run.id,
                "date": str(baseline_run.date),
                "rows": 98_000,
            }
            if baseline_run
            else {"kind": "reference_scores", "rows": 5000}
        ),
        "rows": rows,
        "baseline_rows": 98_000,
        "rows_change": round(rows / 98_000 - 1, 4),
        "rows_status": "ok",
        "psi": psi,
        "psi_status": psi_status,
        "adversarial_auc": auc,
        "adversarial_auc_stderr": 0.006,
        "adversarial_status": auc_status,
        "features": features,
        "missing_share": 0.0,
        "missing_status": "ok",
        "constant": False,
        "constant_status": "ok",
        "histogram": histogram(min(psi, 0.3)),
        "thresholds": THRESHOLDS,
        "seconds": 0.4,
    }
    result.update(extra)
    return result


def make_models(owner, count: int, prefix: str = "model", **fields) -> list[Deployment]:
    """`count` active models of `owner`, each with a valid version 1."""
    now = timezone.now()
    deployments = Deployment.objects.bulk_create(
        Deployment(
            owner=owner,
            name=f"{prefix}-{i:03d}",
            slug=f"{prefix}-{i:03d}",
            email=owner.email,
            next_run_at=now + timedelta(hours=6),
            **fields,
        )
        for i in range(count)
    )
    PackageVersion.objects.bulk_create(
        PackageVersion(
            deployment=d,
            number=1,
            file=f"{owner.username}/{d.slug}/v1.dill",
            filename=f"{d.slug}.dill",
            size=20_000,
            sha256="0" * 64,
            state=PackageVersion.State.VALID,
            message="smoke test: scored 200 rows",
            package={"features": FEATURES, "method": "predict_proba", "params": dict(THRESHOLDS)},
        )
        for d in deployments
    )
    return with_champions(deployments)


def with_champions(deployments: list[Deployment]) -> list[Deployment]:
    """Their valid version 1 is their champion, as a validated upload makes it."""
    versions = dict(
        PackageVersion.objects.filter(
            deployment__in=deployments, number=1, state=PackageVersion.State.VALID
        ).values_list("deployment_id", "id")
    )
    for deployment in deployments:
        deployment.champion_id = versions.get(deployment.id)
    Deployment.objects.bulk_update(deployments, ["champion"], batch_size=1000)
    return deployments


def make_runs(deployments: list[Deployment], per_model: int, days_back: int = 0) -> int:
    """`per_model` daily runs of each deployment, the latest `days_back` days ago (finished an
    hour after that): mostly succeeded with quality, one in 17 failed, the lights mixed."""
    end = timezone.localdate() - timedelta(days=days_back)
    now = timezone.now() - timedelta(days=days_back)
    versions = {
        v.deployment_id: v for v in PackageVersion.objects.filter(deployment__in=deployments)
    }
    runs = []
    for m, deployment in enumerate(deployments):
        for day in range(per_model):
            age = per_model - 1 - day  # 0 for the latest run
            finished = now - timedelta(days=age, hours=1)
            run = ScoringRun(
                deployment=deployment,
                version=versions[deployment.id],
                date=end - timedelta(days=age),
                status=ScoringRun.Status.SUCCEEDED,
                attempts=1,
                queued_at=finished - timedelta(minutes=3),
                started_at=finished - timedelta(minutes=2),
                finished_at=finished,
            )
            if (day + m) % 17 == 16:
                run.status = ScoringRun.Status.FAILED
                run.attempts = 3
                run.error = "feature source: missing columns complaints"
            else:
                psi = round(0.02 + 0.3 * ((day * 7 + m * 3) % 23) / 23, 4)
                auc = round(0.5 + 0.2 * ((day * 5 + m) % 19) / 19, 4)
                run.rows = 100_000 + (day * 37 % 500)
                run.quality = quality(psi, auc, rows=run.rows)
                run.quality_status = run.quality["status"]
            runs.append(run)
    ScoringRun.objects.bulk_create(runs, batch_size=2000)
    return len(runs)


def make_fleet(
    owner, count: int, alert: int = 3, warning: int = 12, failed: int = 1, prefix: str = "model"
) -> dict[str, list[Deployment]]:
    """`count` models of `owner` with two daily runs each, whose latest runs (finished an
    hour ago) are `alert` alerting, `warning` warning, `failed` failed and the rest ok,
    spread through the names; the models by the level "My models" shows for them."""
    models = make_models(owner, count, prefix=prefix)
    make_runs(models, 2)
    picked = random.Random(count).sample(models, alert + warning + failed)
    by_level = {
        levels.ALERT: picked[:alert],
        levels.WARNING: picked[alert : alert + warning],
        levels.FAILED: picked[alert + warning :],
    }
    chosen = set(picked)
    by_level[levels.OK] = [m for m in models if m not in chosen]
    latest = ScoringRun.objects.filter(deployment__in=models, date=timezone.localdate())
    latest.update(
        status=ScoringRun.Status.SUCCEEDED,
        error="",
        rows=100_000,
        quality=quality(0.03, 0.52),
        quality_status=levels.OK,
    )
    for light, psi, auc in ((levels.ALERT, 0.31, 0.67), (levels.WARNING, 0.14, 0.58)):
        latest.filter(deployment__in=by_level[light]).update(
            quality=quality(psi, auc), quality_status=light
        )
    latest.filter(deployment__in=by_level[levels.FAILED]).update(
        status=ScoringRun.Status.FAILED,
        error="feature source: missing columns complaints",
        rows=None,
        quality=None,
        quality_status="",
    )
    return by_level
