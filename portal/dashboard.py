"""What the dashboard, a model's page and the status page read about runs and their quality.

Every helper here answers in a fixed number of queries, however many models and runs
there are: a page that lists 200 models must not ask the database 200 times.
"""

from collections.abc import Iterable
from datetime import datetime, timedelta

from django.db.models import (
    Case,
    CharField,
    Count,
    F,
    FloatField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    TextField,
    Value,
    When,
)
from django.db.models.fields.json import KT
from django.db.models.functions import Cast, Coalesce, Concat, NullIf

from scoring.models import Deployment, OnlineCheck, PackageVersion, Role, ScoringRun
from scoring.quality import levels

LIGHTS = (levels.ALERT, levels.WARNING, levels.OK)  # worst first
NO_VERDICT = "none"  # no finished run yet, or its quality not checked yet
# The levels a list of models is filtered by, in the order of the filter's options.
MODEL_LEVELS = (levels.ALERT, levels.WARNING, levels.FAILED, levels.OK, NO_VERDICT)
CHART_RUNS = 365  # points on the PSI and AUC charts: a year of daily runs
TOP_FEATURES = 10
# Beat ticks every minute: a tick older than this means no runs are being dispatched.
TICK_STALE_AFTER = timedelta(minutes=3)


def quality_field(name: str) -> NullIf:
    """A value inside `quality`, read by the database rather than loading the whole dict.

    SQLite reads a JSON null as the text 'null' (which would cast to 0): it stays None."""
    return NullIf(KT(f"quality__{name}"), Value("null", output_field=TextField()))


def metric(name: str) -> Cast:
    return Cast(quality_field(name), FloatField())


def latest_finished_runs() -> QuerySet:
    """The champion's runs of the deployment of the outer query, its latest finished first: a
    subquery read through the (deployment, -finished_at) index. A challenger's runs are on
    the model page, beside the champion's."""
    return ScoringRun.objects.filter(
        deployment=OuterRef("pk"), finished_at__isnull=False, role=Role.CHAMPION
    ).order_by("-finished_at", "-id")


def run_level() -> Case:
    """A run's level as "My models" shows it: failed when its last attempt failed, else its
    quality light, else none (its quality not checked yet)."""
    return Case(
        When(
            status__in=[ScoringRun.Status.FAILED, ScoringRun.Status.RETRYING],
            then=Value(levels.FAILED),
        ),
        When(quality_status__in=LIGHTS, then=F("quality_status")),
        default=Value(NO_VERDICT),
    )


def model_level() -> Coalesce:
    """A deployment's level: its latest finished run's, or none before its first run ends."""
    latest = latest_finished_runs().annotate(level=run_level()).values("level")[:1]
    return Coalesce(Subquery(latest), Value(NO_VERDICT))


def severity_rank(field: str) -> Case:
    """The rank of a level held in `field`, by levels.SEVERITY (worst highest); none lowest."""
    return Case(
        *(When(**{field: name}, then=Value(rank)) for rank, name in enumerate(levels.SEVERITY)),
        default=Value(-1),
    )


def level_counts(deployments: QuerySet, level: Coalesce, names: tuple[str, ...]) -> dict[str, int]:
    """How many of the deployments are at each of `names` (`level` the expression of their
    level), counted by the database in one query; every name is listed, zero or not."""
    found = (
        deployments.select_related(None)
        .prefetch_related(None)
        .order_by()
        .annotate(level=level)
        .values("level")
        .annotate(count=Count("pk"))
    )
    counts = dict.fromkeys(names, 0)
    for row in found:
        counts[row["level"]] += row["count"]
    return counts


def with_last_runs(deployments: QuerySet) -> QuerySet:
    """The deployments annotated with `last_run_id` (their latest finished run) and
    `active_status` ("queued", "running" or None): subqueries, no extra query."""
    active = ScoringRun.objects.filter(
        deployment=OuterRef("pk"), status__in=[ScoringRun.Status.QUEUED, ScoringRun.Status.RUNNING]
    )
    return deployments.annotate(
        last_run_id=Subquery(latest_finished_runs().values("id")[:1]),
        active_status=Subquery(active.order_by("-id").values("status")[:1]),
    )


def attach_last_runs(deployments: Iterable[Deployment]) -> list[Deployment]:
    """The deployments of `with_last_runs`, each with `last_run` (a ScoringRun or None),
    the runs read in one query."""
    rows = list(deployments)
    runs = ScoringRun.objects.in_bulk([d.last_run_id for d in rows if d.last_run_id])
    for deployment in rows:
        deployment.last_run = runs.get(deployment.last_run_id)
    return rows


def latest_checked_runs() -> QuerySet:
    """The champion's runs of the outer query's deployment that have a quality light, latest
    first."""
    return ScoringRun.objects.filter(
        deployment=OuterRef("pk"), quality_status__in=LIGHTS, role=Role.CHAMPION
    ).order_by("-finished_at", "-id")


def checked_level() -> Coalesce:
    """A deployment's light on the status page: its latest checked run's, else none."""
    latest = latest_checked_runs().values("quality_status")[:1]
    return Coalesce(Subquery(latest), Value(NO_VERDICT))


def with_latest_check(deployments: QuerySet) -> QuerySet:
    """The deployments as the status page's quality table reads them: `run_id` (their
    latest checked run) and `owner_name`, as dicts."""
    return (
        deployments.select_related(None)
        .prefetch_related(None)
        .annotate(
            run_id=Subquery(latest_checked_runs().values("id")[:1]),
            owner_name=Case(  # as Deployment.owner_name says it
                When(team__isnull=False, then=Concat(Value("team/"), "team__slug")),
                default=F("owner__username"),
                output_field=CharField(),
            ),
        )
        .values("id", "name", "owner_name", "run_id")
    )


def quality_rows(deployments: Iterable[dict]) -> list[dict]:
    """The status page's quality rows of a page of `with_latest_check(...).values(...)`:
    each with its latest check's light, date, PSI and AUC, read in one query."""
    rows = list(deployments)
    runs = {
        run["id"]: run
        for run in ScoringRun.objects.filter(id__in=[r["run_id"] for r in rows if r["run_id"]])
        .values("id", "date", "quality_status", psi=metric("psi"), auc=metric("adversarial_auc"))
        .iterator()
    }
    models = []
    for row in rows:
        run = runs.get(row["run_id"]) or {}
        models.append(
            {
                "id": row["id"],
                "name": row["name"],
                "owner": row["owner_name"],
                "status": run.get("quality_status"),
                "run": run.get("id"),
                "date": run.get("date"),
                "psi": run.get("psi"),
                "auc": run.get("auc"),
            }
        )
    return models


def thresholds(quality: dict | None, version: PackageVersion | None) -> dict:
    """The warning and alert lines: those the latest check used, else the package's, else the site's."""
    params = ((version.package or {}).get("params") or {}) if version else {}
    return levels.thresholds((quality or {}).get("thresholds"), params)


def latest_checked_run(deployment: Deployment) -> ScoringRun | None:
    """The champion's latest run with quality results: its histogram and features are drawn."""
    return (
        deployment.runs.filter(role=Role.CHAMPION)
        .exclude(quality_status="")
        .filter(quality__isnull=False)
        .order_by("-finished_at", "-id")
        .first()
    )


def latest_online_check(deployment: Deployment) -> OnlineCheck | None:
    """The latest day of an online model's traffic checked against its batch run (none
    while the model is not online: a batch model's page asks nothing of it)."""
    if not deployment.online:
        return None
    return deployment.online_checks.select_related("run__version").first()


def top_features(quality: dict | None, limit: int = TOP_FEATURES) -> list[dict]:
    """In the check's order: by PSI, weighted by the model's importance where it was measured."""
    features = [f for f in (quality or {}).get("features") or [] if f.get("psi") is not None]
    return features[:limit]


def chart_data(
    deployment: Deployment, latest: ScoringRun | None, version: PackageVersion | None
) -> dict:
    """What model_charts.js draws: PSI and AUC per checked run, the lines, the latest histogram."""
    points = list(
        deployment.runs.filter(role=Role.CHAMPION)
        .exclude(quality_status="")
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
    """Waiting, queued, running and retrying runs now, and failed attempts in the last 24 hours: one query.

    Filtered on status first, so the (status, next_attempt_at) index narrows it.
    """
    since = now - timedelta(hours=24)
    return runs.filter(
        status__in=[
            ScoringRun.Status.WAITING,
            ScoringRun.Status.QUEUED,
            ScoringRun.Status.RUNNING,
            ScoringRun.Status.RETRYING,
            ScoringRun.Status.FAILED,
        ]
    ).aggregate(
        waiting=Count("id", filter=Q(status=ScoringRun.Status.WAITING)),
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


def recent_failures(runs: QuerySet, now: datetime) -> QuerySet:
    """Failed attempts of the last 24 hours, newest first (a retrying run failed its last
    attempt); the caller takes a page of them."""
    return (
        runs.select_related(None)
        .select_related("deployment__owner", "deployment__team")
        .filter(
            status__in=[ScoringRun.Status.FAILED, ScoringRun.Status.RETRYING],
            finished_at__gte=now - timedelta(hours=24),
        )
        .defer("quality", "deployment__email")
        .order_by("-finished_at", "-id")
    )
