"""The ground-truth email: how a recipient's runs ranked once their outcomes were known.

One email per recipient (a person, or a team's address) per pass of the ground-truth
check, through the database send queue (scoring.reports.outbox) like the batch reports:
sent once, and a mail server that is down only delays it (tick sends it again).
"""

from collections import defaultdict
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from scoring.models import MaturedReport, ScoringRun
from scoring.quality import levels
from scoring.reports import mail, outbox, recipients


def announce(runs: list[ScoringRun]) -> list[MaturedReport]:
    """Queue one email per recipient of these runs (scoring.reports.recipients: a person,
    with their own models and their teams', or a team's address), sent once committed."""
    rule = recipients.Rule(run.deployment for run in runs)
    by_recipient = defaultdict(list)
    for run in runs:
        for recipient in rule.recipients(run.deployment):
            by_recipient[recipient].append(run)
    made = []
    with transaction.atomic():
        for (kind, id_), found in by_recipient.items():
            status = levels.worst(run.performance_status for run in found)
            whose = {"team_id": id_} if kind == recipients.TEAM else {"owner_id": id_}
            report = MaturedReport.objects.create(**whose, status=status)
            report.runs.set(found)
            made.append(report)
    for report in made:
        transaction.on_commit(lambda report=report: outbox.send(report, timezone.now(), email))
    return made


def email(report: MaturedReport):
    """Each run's model's own address, else the report's person's or team's."""
    runs = list(report.runs.select_related("deployment", "version").order_by("date"))
    fallback = report.team.report_email if report.team_id else report.owner.email
    to = sorted({run.deployment.email or fallback for run in runs} - {""})
    if not to:
        return None
    worst = [run for run in runs if run.performance_status == report.status]
    return mail.make_message(
        "matured", to, {"report": report, "runs": runs, "headline": worst[0] if worst else runs[0]}
    )


def send_due(now: datetime) -> int:
    """For tick: the ground-truth emails a mail server did not take, backing off."""
    return outbox.send_due(MaturedReport.objects.select_related("owner", "team"), now, email)
