"""What the dashboard, a model's page and the status page read about runs and their quality.

Every helper here answers in a fixed number of queries, however many models and runs
there are: a page that lists 200 models must not ask the database 200 times.
"""

from datetime import datetime, timedelta

from django.db.models import (
    Count,
    F,
    FloatField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    TextField,
    Value,
)
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, NullIf

from scoring.models import Deployment, PackageVersion, ScoringRun
from scoring.quality import levels

LIGHTS = (levels.ALERT, levels.WARNING, levels.OK)  # worst first
CHART_RUNS = 365  # points on the PSI and AUC charts: a year of daily runs
TOP_FEATURES = 10
FAILURES_SHOWN = 50
# Beat ticks every minute: a tick older than this means no runs are being dispatched.
TICK_STALE_AFTER = timedelta(minutes=3)


def quality_field(name: str) -> NullIf:
    """A value inside `quality`, read by the database rather than loading the whole dict.

    SQLite reads a JSON null as the text 'null' (which would cast to 0): it stays None."""
    return NullIf(KT(f"quality__{name}"), Value("null", output_field=TextField()))


def metric(name: str) -> Cast:
    return Cast(quality_field(name), FloatField())


def with_last_runs(deployments: QuerySet) -> list[Deployment]:
    """The deployments, each with `last_run` (its latest finished run, or None) and
    `active_status` ("queued", "running" or None): two queries for any number of them.

    The latest run is found by a subquery on the (deployment, -finished_at) index.
    """
    finished = ScoringRun.objects.filter(deployment=OuterRef("pk"), finished_at__isnull=False)
    active = ScoringRun.objects.filter(
        deployment=OuterRef("pk"), status__in=[ScoringRun.Status.QUEUED, ScoringRun.Status.RUNNING]
    )
    rows = list(
        deployments.annotate(
            last_run_id=Subquery(finished.order_by("-finished_at", "-id").values("id")[:1]),
            active_status=Subquery(active.order_by("-id").values("status")[:1]),
        )
    )
    runs = ScoringRun.objects.in_bulk([d.last_run_id for d in rows if d.last_run_id])
    for deployment in rows:
        deployment.last_run = runs.get(deployment.last_run_id)
    return rows


def latest_quality(deployments: QuerySet) -> list[dict]:
    """Each deployment's latest quality verdict (or None), worst first: two queries."""
    checked = ScoringRun.objects.filter(deployment=OuterRef("pk")).exclude(quality_status="")
    rows = list(
        deployments.select_related(None)
        .prefetch_related(None)
        .annotate(
            run_id=Subquery(checked.order_by("-finished_at", "-id").values("id")[:1]),
            owner_name=F("owner__username"),
        )
        .values("id", "name", "owner_name", "run_id")
    )
    runs = {
        run["id"]: run
        for run in ScoringRun.objects.filter(id__in=[r["run_id"] for r in rows if r["run_id"]])
        .values("id", "date", "quality_status", psi=metric("psi"), auc=metric("adversarial_auc"))
        .iterator()
    }
    models = []
    for row in rows:
        run = runs.get(row["run_id"])
        models.append(
            {
                "id": row["id"],
                "name": row["name"],
                "owner": row["owner_name"],
                "status": run["quality_status"] if run else None,
                "run": run["id"] if run else None,
                "date": run["date"] if run else None,
                "psi": run["psi"] if run else None,
                "auc": run["auc"] if run else None,
            }
        )
    rank = {light: i for i, light in enumerate(LIGHTS)}
    models.sort(key=lambda m: (rank.get(m["status"], len(LIGHTS)), m["name"].lower(), m["id"]))
    return models


def light_counts(models: list[dict]) -> dict:
    counts = {light: 0 for light in (*LIGHTS, "none")}
    for model in models:
        counts[model["status"] if model["status"] in LIGHTS else "none"] += 1
    return counts


def thresholds(quality: dict | None, version: PackageVersion | None) -> dict:
    """The warning and alert lines: those the latest check used, else the package's, else the site's."""
    params = ((version.package or {}).get("params") or {}) if version else {}
    return levels.thresholds((quality or {}).get("thresholds"), params)


def latest_checked_run(deployment: Deployment) -> ScoringRun | None:
    """The deployment's latest run with quality results: its histogram and features are drawn."""
    return (
        deployment.runs.exclude(quality_status="")
        .filter(quality__isnull=False)
        .order_by("-finished_at", "-id")
        .first()
    )


def top_features(quality: dict | None, limit: int = TOP_FEATURES) -> list[dict]:
    features = [f for f in (quality or {}).get("features") or [] if f.get("psi") is not None]
    return sorted(features, key=lambda f: f["psi"], reverse=True)[:limit]


def chart_data(
    deployment: Deployment, latest: ScoringRun | None, version: PackageVersion | None
) -> dict:
    """What model_charts.js draws: PSI and AUC per checked run, the lines, the latest histogram."""
    points = list(
        deployment.runs.exclude(quality_status="")
        .order_by("-date", "-id")
        .values(
            "id",
            "date",
            "quality_status",
            psi=metric("psi"),
            auc=metric("adversarial_auc"),
            psi_status=quality_field("psi_status"),
            auc_status=quality_field("adversarial_status"),
        )[:CHART_RUNS]
    )
    quality = latest.quality if latest else None
    histogram = (quality or {}).get("histogram")
    return {
        "runs": [
            {
                "run": p["id"],
                "date": p["date"].isoformat(),
                "status": p["quality_status"],
                "psi": p["psi"],
                "psi_status": p["psi_status"],
                "auc": p["auc"],
                "auc_status": p["auc_status"],
            }
            for p in reversed(points)
        ],
        "thresholds": thresholds(quality, version),
        "histogram": histogram if histogram and histogram.get("edges") else None,
        "latest": {"run": latest.id, "date": latest.date.isoformat()} if latest else None,
        "baseline": levels.baseline_text((quality or {}).get("baseline")),
    }


def run_counts(runs: QuerySet, now: datetime) -> dict:
    """Queued, running and retrying runs now, and failed attempts in the last 24 hours: one query.

    Filtered on status first, so the (status, next_attempt_at) index narrows it.
    """
    since = now - timedelta(hours=24)
    return runs.filter(
        status__in=[
            ScoringRun.Status.QUEUED,
            ScoringRun.Status.RUNNING,
            ScoringRun.Status.RETRYING,
            ScoringRun.Status.FAILED,
        ]
    ).aggregate(
        queued=Count("id", filter=Q(status=ScoringRun.Status.QUEUED)),
        running=Count("id", filter=Q(status=ScoringRun.Status.RUNNING)),
        retrying=Count("id", filter=Q(status=ScoringRun.Status.RETRYING)),
        failed_24h=Count(
            "id",
            filter=Q(
                status__in=[ScoringRun.Status.FAILED, ScoringRun.Status.RETRYING],
                finished_at__gte=since,
            ),
        ),
    )


def recent_failures(runs: QuerySet, now: datetime, limit: int = FAILURES_SHOWN) -> list:
    """Failed attempts of the last 24 hours, newest first (a retrying run failed its last attempt)."""
    return list(
        runs.select_related(None)
        .select_related("deployment__owner")
        .filter(
            status__in=[ScoringRun.Status.FAILED, ScoringRun.Status.RETRYING],
            finished_at__gte=now - timedelta(hours=24),
        )
        .defer("quality", "deployment__email")
        .order_by("-finished_at", "-id")[:limit]
    )
