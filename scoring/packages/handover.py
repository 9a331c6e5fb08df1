"""Handing a model over to a team: from a person (one who leaves, or one whose model the
team takes on) or from another team, by someone who may hand it over on its side and
manages the team that takes it (or staff), with a reason.

The model stays the same row: its id, versions, runs, scores (partitioned by its id),
reports, comparisons and record of changes stay; only its owner and its packages' keys
change. The packages move so that a key always holds each of them:

1. under a lock of the target team and of the model's row (an upload of a new version or
   another hand-over waits), each version's object is copied to its new key inside S3;
2. in the same transaction the model becomes the team's and each version's `file` names
   its new key, recorded with the reason (scoring.record);
3. only once that is committed are the old keys deleted, under the former owner's upload
   lock and only those no row names (a new model of theirs of the same name takes the
   same keys). A failure there leaves objects no row names (logged), never a row without
   its object.

A worker that read a version's old key just before the switch finds it gone: the package
cache fetches by the version's current key then (scoring.engine.package_cache.copy_of),
and a package already in its cache is found by its sha256, whatever the key.
"""

import logging

from django.db import transaction
from django.db.models import Q, Sum

from scoring import record
from scoring.models import ChampionChange, Deployment, PackageVersion, Quota, Team
from scoring.packages import deployments, owners, quotas, storage
from scoring.packages.storage import human_bytes

log = logging.getLogger(__name__)

MAX_REASON = 500  # as a change of champion's


class HandOverError(ValueError):
    """A hand-over that cannot be made: the message says why; nothing changed."""


class HandOverNotAllowed(HandOverError):
    """The user may not hand this model over, or may not give it to that team."""


def hand_over(deployment: Deployment, team: Team, reason: str, by) -> Deployment:
    """Make `deployment` the `team`'s, its packages moved to the team's folder; the model
    as it is now."""
    reason = check_reason(reason)
    check_allowed(by, deployment, team)
    moves: dict[str, str] = {}
    copied = switched = False
    try:
        with transaction.atomic():
            # The team first, as an upload to it locks it first: its names and quota hold.
            team = Team.objects.select_for_update().get(id=team.id)
            deployment = (
                Deployment.objects.select_for_update(of=("self",))
                .select_related("owner", "team")
                .get(id=deployment.id)
            )
            check_allowed(by, deployment, team)  # on the row as it is now
            check_target(deployment, team)
            former = deployment.team or deployment.owner
            versions = list(deployment.versions.order_by("number"))
            moved = Deployment(id=deployment.id, slug=deployment.slug, team=team)
            moves = {v.file.name: storage.package_key(moved, v.number) for v in versions}
            storage.copy_objects(moves)  # a failure removes its copies: nothing changed
            copied = True
            switch(deployment, team, versions, moves, reason)
            switched = True
    except BaseException:
        if copied and not switched:  # rolled back: the copies are no row's
            discard(list(moves.values()))
        elif switched:  # the commit itself failed: it may have happened, keep both
            log.exception("hand-over of model %s: commit unknown, old keys kept", deployment.id)
        raise
    transaction.on_commit(lambda: discard_old(list(moves), former))
    return Deployment.objects.select_related("owner", "team").get(id=deployment.id)


def switch(
    deployment: Deployment,
    team: Team,
    versions: list[PackageVersion],
    moves: dict[str, str],
    reason: str,
) -> None:
    """The model the team's, each version's key the new one, in the record with the reason
    (the history shows owner and team before and after, who and when). Its reports no
    longer go to its former person's own address, as a model deployed to a team's (a
    mailing list set on the model stays)."""
    with record.reason(reason):
        if deployment.owner is not None and deployment.email == deployment.owner.email:
            deployment.email = ""
        deployment.owner = None
        deployment.team = team
        deployment.save(update_fields=["owner", "team", "email"])
        for version in versions:
            version.file = moves[version.file.name]
            version.save(update_fields=["file"])


def discard_old(keys: list[str], former) -> None:
    """Remove the old keys once the switch is committed, under the lock an upload of the
    former owner takes (scoring.packages.deployments.deploy): a model of that name they
    upload meanwhile gets those very keys, and a key a row names again is kept. Never
    raises: the hand-over is done; what is not removed is left, logged."""
    try:
        with transaction.atomic():
            if isinstance(former, Team):
                Team.objects.select_for_update().filter(id=former.id).first()
            else:
                Quota.objects.select_for_update().get_or_create(user=former)
            named = set(PackageVersion.objects.filter(file__in=keys).values_list("file", flat=True))
            discard([key for key in keys if key not in named])
    except Exception:
        log.exception("objects left in the models bucket after a hand-over: %s", keys)


def discard(keys: list[str]) -> None:
    """Remove objects no row names any more; a failure leaves them, logged."""
    try:
        storage.delete_objects(keys)
    except storage.StorageError:
        log.exception("objects left in the models bucket after a hand-over: %s", keys)


def check_reason(reason: str | None) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise HandOverError("say why the model is handed over: the reason is kept in its history")
    if len(reason) > MAX_REASON:
        raise HandOverError(f"the reason is {len(reason)} characters long; at most {MAX_REASON}")
    return reason


def check_allowed(by, deployment: Deployment, team: Team) -> None:
    """The user may hand the model over on its side (owners.ACTIONS["hand_over"]: its
    person, a manager of its team) and manages the team that takes it; staff may always."""
    if not owners.may(by, deployment, "hand_over"):
        raise HandOverNotAllowed(
            f"only a manager of the team {deployment.team.name} may hand its models over"
            if deployment.team_id
            else "only the model's owner or staff may hand it over"
        )
    if not owners.manages(by, team):
        raise HandOverNotAllowed(
            f"only a manager of the team {team.name} may hand a model over to it"
        )


def check_target(deployment: Deployment, team: Team) -> None:
    """Refuse what the team cannot take now: the model already, a name it has, a change of
    champion waiting for approval (its approvers are the team's), its quota."""
    if deployment.team_id == team.id:
        raise HandOverError(f"{deployment.name} is the team {team.name}'s already")
    clash = Deployment.objects.filter(team=team, slug=deployment.slug).first()
    if clash is not None:
        raise HandOverError(
            f"the team {team.name} has a model named {clash.name!r} already: rename or delete "
            "one of them first"
        )
    waiting = deployment.champion_changes.filter(status=ChampionChange.Status.WAITING).first()
    if waiting is not None:
        raise HandOverError(
            f"the {waiting.kind} to v{waiting.version.number} is waiting for approval: approve "
            "or withdraw it before handing the model over (its approvers would change)"
        )
    size = deployment.versions.aggregate(total=Sum("size"))["total"] or 0
    adds_a_model = deployment.status == Deployment.Status.ACTIVE and deployments.can_score(
        deployment
    )
    try:
        quotas.check_room(
            team, size, adds_a_model, f"{deployment.name}'s packages ({human_bytes(size)})"
        )
    except quotas.QuotaError as exc:
        raise HandOverError(str(exc)) from None


def team_named(by, named: str | None) -> Team:
    """The team a hand-over names (its slug or name) among the user's teams (any, for
    staff): one they are not in is answered as one that does not exist. Whether they may
    give it a model is check_allowed's."""
    named = (named or "").strip()
    if not named:
        raise HandOverError("name the team that takes the model over")
    team = Team.objects.filter(Q(slug=named) | Q(name=named)).first()
    if team is None or not (by.is_staff or team.id in owners.team_roles(by)):
        raise HandOverError(f"you are in no team named {named!r}")
    return team


def targets(by, deployment: Deployment) -> list[Team]:
    """The teams the user may hand the model over to: none unless they may hand it over."""
    if not owners.may(by, deployment, "hand_over"):
        return []
    teams = Team.objects.exclude(id=deployment.team_id) if deployment.team_id else Team.objects
    if by.is_staff:
        return list(teams.all())
    managed = [id_ for id_, role in owners.team_roles(by).items() if role == owners.MANAGE_TEAM]
    return list(teams.filter(id__in=managed))
