"""Which version of a deployment is live (the champion) and which is tried beside it (the
challenger): the choices are explicit fields of the deployment, made here only.

A validated upload takes the role it was dropped as. The champion role goes to the newest
valid upload dropped as champion, as before roles existed: a version validated late never
displaces a newer champion. One challenger at a time: a new one replaces the previous.
"""

from datetime import date

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from scoring import record
from scoring.models import ChampionChange, Deployment, PackageVersion, Role, ScoringRun
from scoring.packages import owners

MAX_REASON = 500  # characters: a short reason, kept with the change


class RoleError(ValueError):
    """A role change that cannot be made: the message says why; nothing changed."""


def check_dropped_as(role: str | None, deployment: Deployment | None) -> str:
    """The role an upload asks for (default champion); a challenger needs a live version."""
    role = role or Role.CHAMPION
    if role not in Role.values:
        raise RoleError(f"role must be 'champion' or 'challenger', got {role!r}")
    if role == Role.CHALLENGER and (deployment is None or deployment.champion_id is None):
        raise RoleError(
            "a challenger is compared with the live version: upload a champion first, "
            "and add the challenger once it is valid"
        )
    return role


def check_share(share, role: str) -> float | None:
    """A challenger's traffic split: its share of the entities, 0 < share <= 1 (none: it
    scores every entity beside the champion)."""
    if share in (None, ""):
        return None
    if role != Role.CHALLENGER:
        raise RoleError(
            "a share splits the entities between champion and challenger: "
            "give it with role 'challenger'"
        )
    try:
        value = float(share)
    except (TypeError, ValueError):
        value = -1.0
    if isinstance(share, bool) or not 0 < value <= 1:
        raise RoleError(f"share must be a number above 0 and at most 1, got {share!r}")
    return value


def split_share(deployment: Deployment) -> float | None:
    """The share its runs split the entities by: only while it has a challenger."""
    return deployment.challenger_share if deployment.challenger_id else None


def day_splits(pairs: set[tuple[Deployment, date]]) -> dict[tuple[int, date], float | None]:
    """The split each new run of these (deployment, day)s takes, in one query: the day's
    first run's, if the day has runs, else the deployment's split now.

    So every run of a model's day splits the entities alike, and the live scores table
    holds each entity once: a challenger dropped (or its share changed) after its
    champion scored a day scores that day as the champion did (every entity: a shadow),
    and a version made champion since re-scores a split day on the champion's side."""
    ids, days = {d.id for d, _ in pairs}, {day for _, day in pairs}
    first = {}
    runs = ScoringRun.objects.filter(deployment_id__in=ids, date__in=days).order_by("-id")
    for deployment_id, day, share in runs.values_list("deployment_id", "date", "split_share"):
        first[(deployment_id, day)] = share  # the last written is the first run's
    return {
        (d.id, day): first[(d.id, day)] if (d.id, day) in first else split_share(d)
        for d, day in pairs
    }


def day_split(deployment: Deployment, day: date) -> float | None:
    return day_splits({(deployment, day)})[(deployment.id, day)]


def take_role(version: PackageVersion, deployment: Deployment) -> None:
    """A version just found valid takes the role it was dropped as (the deployment's row
    is locked by the caller)."""
    if version.dropped_as == Role.CHALLENGER:
        deployment.challenger = version
        deployment.challenger_share = version.dropped_share
    elif deployment.champion is None or deployment.champion.number < version.number:
        deployment.champion = version
        if deployment.challenger_id == version.id:
            deployment.challenger = None
    deployment.save(update_fields=["champion", "challenger", "challenger_share"])


def scoring_versions(deployment: Deployment) -> list[tuple[PackageVersion, str]]:
    """The versions a run of the deployment scores, with their roles: the champion, and the
    challenger beside it."""
    if deployment.champion is None:
        return []
    scored = [(deployment.champion, Role.CHAMPION)]
    if deployment.challenger is not None:
        scored.append((deployment.challenger, Role.CHALLENGER))
    return scored


def check_reason(reason: str | None) -> str:
    """A change of roles says why, in a short reason kept with it in the record."""
    reason = (reason or "").strip()
    if not reason:
        raise RoleError("say why in a short reason: it is kept with the change")
    if len(reason) > MAX_REASON:
        raise RoleError(f"the reason is {len(reason)} characters; at most {MAX_REASON}")
    return reason


def change_share(deployment: Deployment, share, reason: str) -> Deployment:
    """Change the challenger's traffic split after its upload (none: a shadow challenger,
    scoring every entity beside the champion), recorded with its reason. The days still to
    score split by it; runs already made keep the split they were made with, and a day
    already scored keeps its split (`day_splits`)."""
    reason = check_reason(reason)
    value = check_share(share, Role.CHALLENGER)
    with transaction.atomic(), record.reason(reason):
        deployment = Deployment.objects.select_for_update().get(id=deployment.id)
        if deployment.challenger_id is None:
            raise RoleError(
                f"{deployment.name} has no challenger: a share splits the entities between "
                "champion and challenger"
            )
        if value == deployment.challenger_share:
            now = "a shadow (no share)" if value is None else f"at a share of {value:g}"
            raise RoleError(f"the challenger is {now} already")
        deployment.challenger_share = value
        deployment.save(update_fields=["challenger_share"])
    return deployment


def request_change(
    deployment: Deployment, version: PackageVersion, reason: str, user
) -> ChampionChange:
    """Ask for `version` to become the champion: a promotion of the challenger, or a
    rollback to an earlier valid version. Done at once, or waiting for a second person
    when REQUIRE_APPROVAL is set. Runs already made keep their version; the next ones
    score the new champion."""
    reason = check_reason(reason)
    with transaction.atomic(), record.reason(reason):
        deployment = Deployment.objects.select_for_update().get(id=deployment.id)
        kind = change_kind(deployment, version)
        if deployment.champion_changes.filter(status=ChampionChange.Status.WAITING).exists():
            raise RoleError(
                "another change of the champion is waiting for approval: it must be approved first"
            )
        change = ChampionChange.objects.create(
            deployment=deployment, version=version, kind=kind, reason=reason, requested_by=user
        )
        if not settings.REQUIRE_APPROVAL:
            apply(change, deployment)
    return change


def change_kind(deployment: Deployment, version: PackageVersion) -> str:
    """Promote the challenger, or roll back to another valid version: an earlier one, or
    one a rollback left behind (made champion again without uploading it anew)."""
    if version.deployment_id != deployment.id:
        raise RoleError(f"v{version.number} is not a version of {deployment.name}")
    if version.id == deployment.challenger_id:
        return ChampionChange.Kind.PROMOTE
    if version.state != PackageVersion.State.VALID:
        raise RoleError(f"v{version.number} is {version.state}: only a valid version can score")
    if deployment.champion_id is None:
        raise RoleError(f"{deployment.name} has no champion to roll back from")
    if version.id == deployment.champion_id:
        raise RoleError(f"v{version.number} is the champion already")
    return ChampionChange.Kind.ROLLBACK


def approve(change: ChampionChange, user) -> ChampionChange:
    """The second person's approval, never the one who asked: a manager of the model's
    team, or a staff member of the approvers' group (owners.may_approve)."""
    if change.requested_by_id == user.id:
        raise RoleError("a change must be approved by someone other than the one who asked")
    if not owners.may_approve(user, change.deployment, change.requested_by_id):
        team = change.deployment.team
        managers = f"a manager of the team {team.name} or " if team else ""
        raise RoleError(
            f"only {managers}a staff member of the group {settings.APPROVERS_GROUP!r} may approve"
        )
    with transaction.atomic(), record.reason(change.reason):
        deployment = Deployment.objects.select_for_update().get(id=change.deployment_id)
        waiting = ChampionChange.objects.select_for_update().filter(
            id=change.id, status=ChampionChange.Status.WAITING
        )
        change = waiting.first()
        if change is None:
            raise RoleError("this change is no longer waiting for approval")
        change.approved_by = user
        kind_now = change_kind(deployment, change.version)  # still a sensible change?
        if kind_now != change.kind:
            raise RoleError(f"v{change.version.number} can no longer be a {change.kind}")
        apply(change, deployment)
    return change


def withdraw(change: ChampionChange, user) -> ChampionChange:
    """A waiting change dropped, by the one who asked or an approver: the champion stays."""
    if change.requested_by_id != user.id and not owners.may_approve(
        user, change.deployment, change.requested_by_id
    ):
        raise RoleError("only the one who asked or an approver may withdraw a change")
    with transaction.atomic(), record.reason(change.reason):
        waiting = ChampionChange.objects.select_for_update().filter(
            id=change.id, status=ChampionChange.Status.WAITING
        )
        change = waiting.first()
        if change is None:
            raise RoleError("this change is no longer waiting for approval")
        change.status = ChampionChange.Status.WITHDRAWN
        change.withdrawn_by, change.done_at = user, timezone.now()
        change.save()  # a save, not an update: the record of changes sees it
    return change


def approvers(change: ChampionChange) -> list[str]:
    """Who may approve the change: the page says "waiting for approval by ..."."""
    return owners.approvers(change.deployment, change.requested_by_id)


def apply(change: ChampionChange, deployment: Deployment) -> None:
    """Make the change's version champion (the deployment's row is locked by the caller)."""
    change.replaced = deployment.champion
    deployment.champion = change.version
    if deployment.challenger_id == change.version.id:
        deployment.challenger = None  # promoted: no challenger until a new one is dropped
        deployment.challenger_share = None
    deployment.save(update_fields=["champion", "challenger", "challenger_share"])
    change.status = ChampionChange.Status.DONE
    change.done_at = timezone.now()
    change.save()
