"""The ground-truth email: how an owner's runs ranked once their outcomes were known.

One email per owner per pass of the ground-truth check, through the database send queue
(scoring.reports.outbox) like the batch reports: sent once, and a mail server that is down
only delays it (tick sends it again).
"""

from collections import defaultdict
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from scoring.models import MaturedReport, ScoringRun
from scoring.quality import levels
from scoring.reports import mail, outbox


def announce(runs: list[ScoringRun]) -> list[MaturedReport]:
    """Queue one email per owner for these runs, sent once committed."""
    by_owner = defaultdict(list)
    for run in runs:
        by_owner[run.deployment.owner_id].append(run)
    made = []
    with transaction.atomic():
        for owner_id, owned in by_owner.items():
            status = levels.worst(run.performance_status for run in owned)
            report = MaturedReport.objects.create(owner_id=owner_id, status=status)
            report.runs.set(owned)
            made.append(report)
    for report in made:
        transaction.on_commit(lambda report=report: outbox.send(report, timezone.now(), email))
    return made


def email(report: MaturedReport):
    runs = list(report.runs.select_related("deployment", "version").order_by("date"))
    to = sorted({run.deployment.email or report.owner.email for run in runs} - {""})
    if not to:
        return None
    worst = [run for run in runs if run.performance_status == report.status]
    return mail.make_message(
        "matured", to, {"report": report, "runs": runs, "headline": worst[0] if worst else runs[0]}
    )


def send_due(now: datetime) -> int:
    """For tick: the ground-truth emails a mail server did not take, backing off."""
    return outbox.send_due(MaturedReport.objects.select_related("owner"), now, email)
