"""Deploying packages and managing deployments: the use cases behind the UI and the API.

Every function checks all input before it stores anything, and leaves either
the whole change or none of it: no object without its row, no row without its object.
"""

import logging
from datetime import datetime
from pathlib import PurePath
from typing import BinaryIO

from django.db import transaction
from django.utils.timezone import now

from scoring import enqueue
from scoring.models import DeletedDeployment, Deployment, PackageVersion, Quota, Team
from scoring.packages import owners, quotas, roles, schedules, storage
from scoring.packages.contract import ContractError, check_email, check_name
from scoring.packages.schedules import ScheduleError, check_schedule, check_timezone

log = logging.getLogger(__name__)


class DeployError(ValueError):
    """Bad input: the message says what to fix; nothing was changed."""


MAX_SLICE_AGE_DAYS = 366
# `update`'s max_slice_age_days when it is not to change: None (or "") clears the
# deployment's own setting, so its runs take the package's again.
UNCHANGED = object()


def clean_settings(
    email: str | None,
    schedule: str | None,
    timezone: str | None,
    max_slice_age_days: int | str | None = None,
    current_timezone: str = "UTC",
) -> dict:
    """Check the user-given settings of a deployment; blank ones are left out. A schedule
    is read in the time zone it is given with, else in the deployment's current one."""
    cleaned = {}
    if max_slice_age_days not in (None, ""):
        cleaned["max_slice_age_days"] = check_slice_age(max_slice_age_days)
    try:
        if email:
            cleaned["email"] = check_email(email)
        if timezone:
            cleaned["timezone"] = check_timezone(timezone)
        if schedule:
            cleaned["schedule"] = check_schedule(schedule, timezone or current_timezone)
    except (ContractError, ScheduleError) as exc:
        raise DeployError(str(exc)) from None
    return cleaned


def check_slice_age(value: int | str) -> int:
    """Days as a whole number from 0 (the slice of the run's own date) to a year."""
    try:
        days = int(value)
    except (TypeError, ValueError):
        days = -1
    if (
        isinstance(value, bool)
        or not 0 <= days <= MAX_SLICE_AGE_DAYS
        or str(days) != str(value).strip()
    ):
        raise DeployError(
            f"max_slice_age_days must be a whole number of days from 0 to {MAX_SLICE_AGE_DAYS}, "
            f"got {value!r}"
        )
    return days


def deploy(
    user,
    file: BinaryIO,
    filename: str,
    size: int,
    name: str | None = None,
    email: str | None = None,
    schedule: str | None = None,
    timezone: str | None = None,
    max_slice_age_days: int | str | None = None,
    role: str | None = None,
    share: float | str | None = None,
    team: str | None = None,
) -> PackageVersion:
    """Store a package as a new deployment, or as a new version of the one with that name,
    dropped as the live version (champion, the default) or as a challenger beside it; the
    user's own, or that of the team named `team` (its slug or name)."""
    try:
        team = owners.team_for_upload(user, team)
    except owners.NoSuchTeam as exc:
        raise DeployError(str(exc)) from None
    if not owners.may_deploy_to(user, team):
        raise owners.NotAllowed(
            f"only a member or manager of the team {team.name} may deploy its models"
            if team
            else "a team's token deploys to its team: name it (team)"
        )
    try:
        name = check_name(name or PurePath(filename).stem)
    except ContractError as exc:
        raise DeployError(str(exc)) from None
    slug = Deployment.slug_for(name)
    fields = clean_settings(email, schedule, timezone, max_slice_age_days)
    file.seek(0)
    try:
        storage.check_pickle_header(file.read(2))
    except storage.NotAPickle as exc:
        raise DeployError(str(exc)) from None
    sha256 = getattr(file, "sha256", None) or storage.sha256_of(file)

    key = None
    try:
        with transaction.atomic():
            # One upload at a time per owner: quotas and version numbers cannot race.
            if team is not None:
                team = Team.objects.select_for_update().get(id=team.id)
            else:
                Quota.objects.select_for_update().get_or_create(user=user)
            owned = Deployment.objects.select_for_update().filter(quotas.owned(team or user))
            deployment = owned.filter(slug=slug).first()
            if deployment is not None and deployment.name != name:
                whose = "the team's model" if team else "your model"
                raise DeployError(
                    f"the name {name!r} is too close to {whose} {deployment.name!r}: both "
                    f"are stored as {slug!r}. Use {deployment.name!r} to add a version to it, "
                    "or a name that differs in its letters or digits"
                )
            try:
                dropped_as = roles.check_dropped_as(role, deployment)
                dropped_share = roles.check_share(share, dropped_as)
            except roles.RoleError as exc:
                raise DeployError(str(exc)) from None
            latest = deployment.versions.order_by("-number").first() if deployment else None
            if latest and latest.sha256 == sha256:
                raise DeployError(
                    f"this file is the same as the current version v{latest.number} of {deployment.name}"
                )
            adds_a_model = deployment is None or (
                deployment.status == Deployment.Status.ACTIVE and not can_score(deployment)
            )
            quotas.check(team or user, size, adds_a_model)
            if deployment is None:
                deployment = new_deployment(user, team, name, slug)
            for field, value in fields.items():
                setattr(deployment, field, value)
            deployment.next_run_at = next_fire_time(deployment)
            deployment.save()
            number = (latest.number if latest else 0) + 1
            key = storage.package_key(deployment, number)
            storage.upload(file, key, sha256)
            version = PackageVersion.objects.create(
                deployment=deployment,
                number=number,
                file=key,
                filename=PurePath(filename).name[:255],
                size=size,
                sha256=sha256,
                form_email=fields.get("email", ""),
                form_schedule=fields.get("schedule", ""),
                dropped_as=dropped_as,
                dropped_share=dropped_share,
            )
            transaction.on_commit(lambda: enqueue_validation(version.id))
    except quotas.QuotaError as exc:
        raise DeployError(str(exc)) from None
    except BaseException:
        if key is not None:
            discard_object(key)
        raise
    return version


def new_deployment(user, team: Team | None, name: str, slug: str) -> Deployment:
    """A team's model reports to the team (its address, or its members) unless given an
    email; a person's to the person."""
    if team is not None:
        return Deployment(team=team, name=name, slug=slug, email="")
    return Deployment(owner=user, name=name, slug=slug, email=user.email or "")


def enqueue_validation(version_id: int) -> None:
    try:
        enqueue.validate_version(version_id)
    except Exception:  # broker down: the row stays pending and tick sends it again
        log.exception("could not enqueue validation of version %s; tick will retry", version_id)


def discard_object(key: str) -> None:
    try:
        storage.delete_objects([key])
    except storage.StorageError:
        log.exception("could not remove %s after a failed upload", key)


def update(
    deployment: Deployment,
    email=None,
    schedule=None,
    timezone=None,
    status=None,
    max_slice_age_days=UNCHANGED,
    online: bool | None = None,
) -> Deployment:
    """Change a deployment's settings; None leaves one as it is. `online` and `status` are
    independent: a paused schedule keeps serving online, and switching online off leaves the
    schedule running. A model with no valid champion may be switched on (its endpoint
    answers 409 until one is valid)."""
    fields = clean_settings(email, schedule, timezone, current_timezone=deployment.timezone)
    if online is not None:
        fields["online"] = bool(online)
    if max_slice_age_days is not UNCHANGED:
        cleared = max_slice_age_days in (None, "")
        fields["max_slice_age_days"] = None if cleared else check_slice_age(max_slice_age_days)
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().get(id=deployment.id)
        if status is not None and status != deployment.status:
            if status not in (Deployment.Status.ACTIVE, Deployment.Status.PAUSED):
                raise DeployError(f"status must be 'active' or 'paused', got {status!r}")
            if status == Deployment.Status.ACTIVE:
                try:
                    owner = deployment.team or deployment.owner
                    quotas.check(owner, 0, adds_a_model=can_score(deployment))
                except quotas.QuotaError as exc:
                    raise DeployError(str(exc)) from None
            fields["status"] = status
        for field, value in fields.items():
            setattr(deployment, field, value)
        schedule_next_run(deployment)
        deployment.save()
    return deployment


def next_fire_time(deployment: Deployment) -> datetime | None:
    """The schedule's next fire time from now, read in the deployment's time zone (stored
    in UTC); none while it is paused."""
    if deployment.status != Deployment.Status.ACTIVE:
        return None
    return schedules.next_runs(deployment.schedule, deployment.timezone, now())[0]


def schedule_next_run(deployment: Deployment) -> None:
    """The next fire time, or none while no version can score (all of them are invalid)."""
    deployment.next_run_at = next_fire_time(deployment) if can_score(deployment) else None


def can_score(deployment: Deployment) -> bool:
    """Whether a version is valid or may still become so."""
    return deployment.versions.exclude(state=PackageVersion.State.INVALID).exists()


def delete(deployment: Deployment) -> None:
    """Remove the packages from storage first: if S3 fails, the deployment stays whole.

    Its rows go; its record of changes stays (the entries name it by id, django-auditlog
    keeps them), and so do its scores' partitions for DELETED_SCORES_RETENTION_DAYS: the
    tombstone left here tells the daily maintenance when to remove them
    (scoring.engine.retention)."""
    storage.delete_objects(package_keys([deployment]))
    with transaction.atomic():
        leave_tombstone(deployment, deployment.owner)
        deployment.delete()


def delete_all_of(owner) -> None:
    """What `delete` does for each own model of a person about to be deleted: packages
    first, so an S3 failure leaves the person whole. Their tombstones name no owner, as the
    deletion would null it anyway. Their teams' models stay."""
    owned = list(owner.deployments.filter(team__isnull=True).select_related("owner"))
    storage.delete_objects(package_keys(owned))
    for deployment in owned:
        leave_tombstone(deployment, owner=None)
    Deployment.objects.filter(id__in=[d.id for d in owned]).delete()


def package_keys(owned: list[Deployment]) -> list[str]:
    versions = PackageVersion.objects.filter(deployment__in=owned)
    return list(versions.values_list("file", flat=True))


def leave_tombstone(deployment: Deployment, owner) -> None:
    """The mark that keeps the model's scores for the retention, then has them removed."""
    DeletedDeployment.objects.create(deployment_id=deployment.id, name=str(deployment), owner=owner)
