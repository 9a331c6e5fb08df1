"""Who hears about a model: one rule that the batch reports, the ground-truth emails and the
failure emails all ask.

A person's model: its own `email`, else its person's account email (as before teams).
A team's model: its own `email` when set; else the team's `report_email` (a mailing list);
else each of the team's people, who read the team's models in the same email as their own.
Only active people count: a user who leaves (deactivated, or taken out of the team by the
directory) leaves the team's models running, and their reports go to the team; a team's
token is no person.

A report is one per recipient of a batch: a person (`owner`), their own models first and
then each team's; or a team (`team`), for the models that go to an address of their own or
the team's, or to no one at all when the team has nobody left (its page still shows them).
"""

from collections import defaultdict
from collections.abc import Iterable

from django.db.models import Case, CharField, F, Q, Value, When

from scoring.models import Deployment, Membership, Team

PERSON, TEAM = "owner", "team"
# ("owner", user id) or ("team", team id): whom one report of a batch is for.
Recipient = tuple[str, int | None]


class Rule:
    """The rule for a set of models, the teams' addresses and people read once (two
    queries, whatever the number of models)."""

    def __init__(self, deployments: Iterable[Deployment]):
        team_ids = {deployment.team_id for deployment in deployments if deployment.team_id}
        self.team_addresses = dict(
            Team.objects.filter(id__in=team_ids).values_list("id", "report_email")
        )
        silent = {team for team, address in self.team_addresses.items() if not address}
        self.people = people(silent)

    def recipients(self, deployment: Deployment) -> list[Recipient]:
        """Whose report of a batch the model's run belongs in (one report each)."""
        if deployment.team_id is None:
            return [(PERSON, deployment.owner_id)]
        found = self.people.get(deployment.team_id)
        if self.addressed(deployment) or not found:
            return [(TEAM, deployment.team_id)]
        return [(PERSON, user_id) for user_id in found]

    def addressed(self, deployment: Deployment) -> bool:
        """A team's model with an address of its own or of its team's."""
        return bool(deployment.email or self.team_addresses.get(deployment.team_id))


def active_people() -> Q:
    """The memberships that make a person hear of a team's models."""
    return Q(user__is_active=True, user__service_token__isnull=True)


def people(team_ids: Iterable[int]) -> dict[int, list[int]]:
    """The active people (no tokens) of each team, by team id."""
    found = defaultdict(list)
    rows = (
        Membership.objects.filter(active_people(), team__in=list(team_ids))
        .order_by("team_id", "user_id")
        .values_list("team_id", "user_id")
    )
    for team_id, user_id in rows:
        found[team_id].append(user_id)
    return dict(found)


def people_addresses(deployment: Deployment) -> list[str]:
    """The account emails of the people who hear of a team's model that has no address
    of its own or of its team's; [] for any other model (its own address says where)."""
    if deployment.team_id is None or Rule([deployment]).addressed(deployment):
        return []
    found = Membership.objects.filter(active_people(), team=deployment.team_id)
    return sorted(set(found.exclude(user__email="").values_list("user__email", flat=True)))


def report_addresses(report) -> list[str]:
    """Where a batch report goes. A team's: each model's own address, else the team's. A
    person's, as before teams: their own models' addresses, else their account email when
    none has one; and their account email when it holds their teams' models."""
    pairs = set(report.runs.values_list("deployment__team", "deployment__email").distinct())
    if report.team_id:
        found = {email or report.team.report_email for _, email in pairs}
    else:
        account = report.owner.email if report.owner else ""
        own = {email for team, email in pairs if team is None}
        found = (own - {""}) or ({account} if own else set())
        if any(team is not None for team, _ in pairs):
            found.add(account)
    return sorted(found - {""})


def failure_address() -> Case:
    """The address of a failure email row (scoring.models.Notification), in SQL: the person
    it was queued for (one of a team's people), else its model's own address, else its
    model's team's; "" when there is none (nothing to send, as for a person's model
    without an address)."""
    return Case(
        When(~Q(address=""), then=F("address")),
        When(~Q(run__deployment__email=""), then=F("run__deployment__email")),
        When(run__deployment__team__isnull=False, then=F("run__deployment__team__report_email")),
        default=Value(""),
        output_field=CharField(),
    )
