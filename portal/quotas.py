from scoring.models import Quota, active_model_count, stored_bytes
from scoring.storage import human_bytes


def quota_usage(user) -> dict:
    """A user's quota use, e.g. "3 of 10 models, 120 MB of 1 GB"."""
    quota = Quota.objects.filter(user=user).first() or Quota(user=user)
    models, used = active_model_count(user), stored_bytes(user)
    return {
        "models": models,
        "max_models": quota.max_active_models,
        "bytes": used,
        "max_bytes": quota.max_bytes,
        "percent": min(
            100,
            round(
                100 * max(models / max(quota.max_active_models, 1), used / max(quota.max_bytes, 1))
            ),
        ),
        "text": f"{models} of {quota.max_active_models} models, "
        f"{human_bytes(used)} of {human_bytes(quota.max_bytes)}",
    }
