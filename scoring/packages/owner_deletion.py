"""A user deleted in the admin (or by `User.delete()`) takes their models with them: the
cascade removes the rows, and this leaves what a model's own deletion leaves, its packages
gone from S3 and a tombstone by which the daily maintenance removes its scores after
DELETED_SCORES_RETENTION_DAYS (scoring.engine.retention); else they stayed for ever."""

from django.conf import settings
from django.db.models.signals import pre_delete
from django.dispatch import receiver

from scoring.packages import deployments


# pre_delete runs in the deletion's transaction: a failure here leaves the user whole.
@receiver(pre_delete, sender=settings.AUTH_USER_MODEL)
def delete_models_of_deleted_user(sender, instance, **_) -> None:
    deployments.delete_all_of(instance)
