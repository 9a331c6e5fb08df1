"""Quotas of a person's own models and of each team's: the active models that can score,
and the bytes of stored packages (a team's models count for the team, not its members).

An upload over quota is refused before anything is stored. A model whose every version
is invalid cannot score, so it does not count: a user who drops three broken files is
never locked out by them.
"""

from django.conf import settings
from django.db.models import Count, Exists, OuterRef, Q, Sum

from scoring.models import Deployment, PackageVersion, Quota, Team
from scoring.packages.storage import human_bytes


class QuotaError(Exception):
    """An upload or a change the user's quota does not allow; the message says why."""


def scorable() -> Exists:
    """Whether a deployment has a version that is valid or may still become so."""
    return Exists(
        PackageVersion.objects.filter(deployment=OuterRef("pk")).exclude(
            state=PackageVersion.State.INVALID
        )
    )


def owned(owner) -> Q:
    """The models of an owner: a team's, or a person's own (not their teams')."""
    if isinstance(owner, Team):
        return Q(team=owner)
    return Q(owner=owner, team__isnull=True)


def limits(owner) -> Quota | Team:
    """What carries the owner's limits (max_active_models, max_bytes)."""
    if isinstance(owner, Team):
        return owner
    return Quota.objects.filter(user=owner).first() or Quota(user=owner)


def active_models(owner) -> tuple[int, int]:
    """The owner's active models that count (can score), and those that cannot: one query."""
    counts = (
        Deployment.objects.filter(owned(owner), status=Deployment.Status.ACTIVE)
        .annotate(can_score=scorable())
        .aggregate(counted=Count("id", filter=Q(can_score=True)), total=Count("id"))
    )
    return counts["counted"], counts["total"] - counts["counted"]


def stored_bytes(owner) -> int:
    deployments = Deployment.objects.filter(owned(owner))
    versions = PackageVersion.objects.filter(deployment__in=deployments)
    return versions.aggregate(total=Sum("size"))["total"] or 0


def check(owner, size: int, adds_a_model: bool) -> None:
    """Refuse a package over the size limit, a model past the active-model quota (when this
    upload or change makes one more count) or bytes past the storage quota."""
    if size > settings.MAX_PACKAGE_BYTES:
        raise QuotaError(
            f"this package is {human_bytes(size)}; the largest allowed is "
            f"{human_bytes(settings.MAX_PACKAGE_BYTES)}"
        )
    check_room(owner, size, adds_a_model, f"this package ({human_bytes(size)})")


def check_room(owner, size: int, adds_a_model: bool, what: str) -> None:
    """Refuse what would take the owner past their active models (when `adds_a_model`) or
    their bytes: `what` (an upload's package, a handed-over model's packages) names the
    `size` bytes in the message."""
    quota = limits(owner)
    whose = f"the team {owner.name} has" if isinstance(owner, Team) else "you have"
    if adds_a_model and active_models(owner)[0] >= quota.max_active_models:
        raise QuotaError(
            f"{whose} {quota.max_active_models} of {quota.max_active_models} active models: "
            "pause or delete one before deploying another"
        )
    used = stored_bytes(owner)
    if used + size > quota.max_bytes:
        whose = f"the team {owner.name}'s" if isinstance(owner, Team) else "your"
        raise QuotaError(
            f"{what} would bring {whose} storage to "
            f"{human_bytes(used + size)} of {human_bytes(quota.max_bytes)}: delete old versions "
            "or models first"
        )


def usage(owner) -> dict:
    """An owner's quota use, e.g. "3 of 10 active models (1 that cannot score not counted),
    120 MB of 1 GB"."""
    quota = limits(owner)
    (models, broken), used = active_models(owner), stored_bytes(owner)
    uncounted = f" ({broken} that cannot score not counted)" if broken else ""
    share = max(models / max(quota.max_active_models, 1), used / max(quota.max_bytes, 1))
    return {
        "models": models,
        "uncounted_models": broken,
        "max_models": quota.max_active_models,
        "bytes": used,
        "max_bytes": quota.max_bytes,
        "percent": min(100, round(100 * share)),
        "text": f"{models} of {quota.max_active_models} active models{uncounted}, "
        f"{human_bytes(used)} of {human_bytes(quota.max_bytes)}",
    }
