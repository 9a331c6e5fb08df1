"""Per-user quotas: the active models that can score, and the bytes of stored packages.

An upload over quota is refused before anything is stored. A model whose every version
is invalid cannot score, so it does not count: a user who drops three broken files is
never locked out by them.
"""

from django.conf import settings
from django.db.models import Count, Exists, OuterRef, Q, Sum

from scoring.models import Deployment, PackageVersion, Quota
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


def active_models(user) -> tuple[int, int]:
    """The user's active models that count (can score), and those that cannot: one query."""
    counts = (
        Deployment.objects.filter(owner=user, status=Deployment.Status.ACTIVE)
        .annotate(can_score=scorable())
        .aggregate(counted=Count("id", filter=Q(can_score=True)), total=Count("id"))
    )
    return counts["counted"], counts["total"] - counts["counted"]


def stored_bytes(user) -> int:
    return (
        PackageVersion.objects.filter(deployment__owner=user).aggregate(total=Sum("size"))["total"]
        or 0
    )


def check(user, size: int, adds_a_model: bool) -> None:
    """Refuse a package over the size limit, a model past the active-model quota (when this
    upload or change makes one more count) or bytes past the storage quota."""
    quota, _ = Quota.objects.get_or_create(user=user)
    if size > settings.MAX_PACKAGE_BYTES:
        raise QuotaError(
            f"this package is {human_bytes(size)}; the largest allowed is "
            f"{human_bytes(settings.MAX_PACKAGE_BYTES)}"
        )
    if adds_a_model and active_models(user)[0] >= quota.max_active_models:
        raise QuotaError(
            f"you have {quota.max_active_models} of {quota.max_active_models} active models: "
            "pause or delete one before deploying another"
        )
    used = stored_bytes(user)
    if used + size > quota.max_bytes:
        raise QuotaError(
            f"this package ({human_bytes(size)}) would bring your storage to "
            f"{human_bytes(used + size)} of {human_bytes(quota.max_bytes)}: delete old versions "
            "or models first"
        )


def usage(user) -> dict:
    """A user's quota use, e.g. "3 of 10 active models (1 that cannot score not counted),
    120 MB of 1 GB"."""
    quota = Quota.objects.filter(user=user).first() or Quota(user=user)
    (models, broken), used = active_models(user), stored_bytes(user)
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
