"""What a report says: one report per recipient per batch, each of their models with its
status, rows and data quality, worst first; a person's own models, then each of their
teams' (scoring.reports.recipients), each owner's under a heading of its own.

`report_context` feeds both the email (scoring.reports.mail) and the report's page in
the portal, so the two always say the same thing.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date

from django.conf import settings
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import (
    Case,
    CharField,
    Count,
    F,
    IntegerField,
    Max,
    Min,
    OuterRef,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Lower

from scoring.models import Batch, Comparison, OnlineCheck, Report, ScoringRun, Team
from scoring.quality import levels
from scoring.quality.levels import ALERT, FAILED, OK, SEVERITY, WARNING, worst
from scoring.reports import recipients

# Traffic lights: (text colour, background), the same in the email and on the page.
LIGHTS = {
    OK: ("#1a7f37", "#e7f5ec"),
    WARNING: ("#9a6700", "#fff4d6"),
    ALERT: ("#c0362c", "#fdecea"),
    FAILED: ("#c0362c", "#fdecea"),
}
NO_LIGHT = ("#667085", "#f1f3f6")

# What the subject says a model did, by its status; past tense reads for one model or several.
VERBS = {OK: "scored", WARNING: "may be drifting", ALERT: "drifted", FAILED: "failed"}
CHECK_VERBS = {
    "rows": {WARNING: "changed in size", ALERT: "changed in size"},
    "missing": {WARNING: "returned missing scores", ALERT: "returned missing scores"},
    "constant": {WARNING: "returned constant scores", ALERT: "returned constant scores"},
}


def run_status(run: ScoringRun) -> str:
    """ok, warning, alert or failed: a run still retrying counts as failed until it succeeds."""
    if run.status in (ScoringRun.Status.FAILED, ScoringRun.Status.RETRYING):
        return FAILED
    return run.quality_status if run.quality_status in SEVERITY else OK


def build_reports(batch: Batch) -> list[Report]:
    """One report per recipient of the batch's runs (scoring.reports.recipients: a person,
    with their own models and their teams', or a team's address), with those runs and the
    worst of their statuses.

    Calling it again (a retried batch, a second worker) adds runs and updates the status,
    never a second report.
    """
    # Statuses only: a report of a thousand runs need not load their quality.
    runs = list(
        ScoringRun.objects.filter(batch=batch).select_related("deployment").defer("quality")
    )
    rule = recipients.Rule(run.deployment for run in runs)
    by_recipient: dict[recipients.Recipient, list[ScoringRun]] = defaultdict(list)
    for run in runs:
        for recipient in rule.recipients(run.deployment):
            by_recipient[recipient].append(run)
    reports = []
    for (kind, id_), found in sorted(by_recipient.items(), key=lambda i: (i[0][0], i[0][1] or 0)):
        whose = {"team_id": id_} if kind == recipients.TEAM else {"owner_id": id_, "team": None}
        with transaction.atomic():
            report, _ = Report.objects.get_or_create(
                batch=batch, **whose, defaults={"status": worst(map(run_status, found))}
            )
            report.runs.add(*found)
            status = worst(map(run_status, report.runs.only("status", "quality_status")))
            if report.status != status:
                report.status = status
                report.save(update_fields=["status"])
        reports.append(report)
    return reports


# --- what a report says ----------------------------------------------------------------


class Light:
    """The colours of the status light of whatever has a `status`."""

    @property
    def fg(self) -> str:
        return LIGHTS[self.status][0]

    @property
    def bg(self) -> str:
        return LIGHTS[self.status][1]


@dataclass
class LightCount(Light):
    """One light, how many runs have it and of how many models, for the counts line."""

    status: str
    count: int
    models: int


@dataclass
class Check:
    """One row of the data-quality table."""

    name: str
    value: str
    detail: str
    status: str | None

    @property
    def word(self) -> str:
        return self.status.upper() if self.status else "—"

    @property
    def fg(self) -> str:
        return LIGHTS.get(self.status or "", NO_LIGHT)[0]

    @property
    def bg(self) -> str:
        return LIGHTS.get(self.status or "", NO_LIGHT)[1]


@dataclass
class Section(Light):
    """One model of a report: its run, its status and what the quality checks found."""

    run: ScoringRun
    status: str
    checks: list[Check] = field(default_factory=list)
    features: list[Check] = field(default_factory=list)
    baseline: str = ""
    has_chart: bool = False
    content_id: str = ""

    @property
    def deployment(self):
        return self.run.deployment

    @property
    def word(self) -> str:
        return self.status.upper()

    @property
    def rows(self) -> str:
        return "—" if self.run.rows is None else f"{self.run.rows:,}"

    @property
    def duration(self) -> str:
        seconds = self.run.duration_seconds
        return "—" if seconds is None else human_duration(seconds)

    @property
    def verb(self) -> str:
        """What happened, in the subject's words: drift unless a non-drift check is the worst."""
        for key, verbs in CHECK_VERBS.items():
            if self.status in verbs and not self.drift_at_status() and self.check_at(key):
                return verbs[self.status]
        return VERBS[self.status]

    def check_at(self, key: str) -> bool:
        quality = self.run.quality or {}
        return quality.get(f"{key}_status") == self.status

    def drift_at_status(self) -> bool:
        quality = self.run.quality or {}
        keys = ("psi_status", "adversarial_status")
        return any(quality.get(key) == self.status for key in keys) or any(
            feature.status == self.status for feature in self.features
        )


@dataclass
class Group:
    """The models of one owner in a report: its reader's own (`team` None), or a team's."""

    team: Team | None
    sections: list[Section] = field(default_factory=list)

    @property
    def heading(self) -> str:
        return f"Team {self.team.name}" if self.team else "Your models"


def by_owner(sections: list[Section]) -> list[Group]:
    """The sections in one group per owner, the reader's own first, then each team's by
    name; each group keeps the sections' order."""
    groups: dict[int | None, Group] = {}
    for section in sections:
        team_id = section.deployment.team_id
        groups.setdefault(team_id, Group(section.deployment.team)).sections.append(section)
    return sorted(groups.values(), key=lambda g: (g.team is not None, g.heading.lower()))


def human_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def quality_checks(quality: dict) -> list[Check]:
    """The quality table: only the checks that were computed for this run."""
    lines = levels.thresholds(quality.get("thresholds"))
    psi_warn, psi_alert = lines["psi_warn"], lines["psi_alert"]
    auc_warn, auc_alert = lines["adversarial_warn"], lines["adversarial_alert"]
    checks = []
    if quality.get("rows") is not None:
        detail = ""
        if quality.get("baseline_rows") is not None and quality.get("rows_change") is not None:
            detail = (
                f"{quality['rows_change']:+.1%} vs {quality['baseline_rows']:,} in the baseline"
            )
        checks.append(Check("Rows", f"{quality['rows']:,}", detail, quality.get("rows_status")))
    if quality.get("psi") is not None:
        checks.append(
            Check(
                "Score PSI",
                f"{quality['psi']:.3f}",
                f"warning from {psi_warn:g}, alert from {psi_alert:g}",
                quality.get("psi_status"),
            )
        )
    if quality.get("adversarial_auc") is not None:
        value = f"{quality['adversarial_auc']:.3f}"
        if quality.get("adversarial_auc_stderr") is not None:
            value += f" ± {quality['adversarial_auc_stderr']:.3f}"
        sample = (
            f"{quality['adversarial_rows']:,} rows sampled; "
            if quality.get("adversarial_rows")
            else ""
        )
        detail = f"0.5 = no drift; {sample}warning above {auc_warn:g}, alert above {auc_alert:g}"
        checks.append(Check("Adversarial AUC", value, detail, quality.get("adversarial_status")))
    if quality.get("missing_share") is not None:
        checks.append(
            Check(
                "Missing scores",
                f"{quality['missing_share']:.1%}",
                "share of missing or non-finite scores",
                quality.get("missing_status"),
            )
        )
    if quality.get("constant") is not None:
        checks.append(
            Check(
                "Constant scores",
                "yes" if quality["constant"] else "no",
                "every row got the same score" if quality["constant"] else "",
                quality.get("constant_status"),
            )
        )
    return checks


def drifting_features(quality: dict) -> list[Check]:
    """Most drifting first, weighted by the model's importance where it was measured; the
    detail says how much the model leans on each ('21% of the model's importance')."""
    return [
        Check(
            feature.get("name", "?"),
            f"PSI {feature['psi']:.2f}" if feature.get("psi") is not None else "—",
            importance_text(feature.get("importance")),
            feature.get("status"),
        )
        for feature in quality.get("features") or []
    ]


def importance_text(share: float | None) -> str:
    if share is None:
        return ""
    return (
        f"{share:.0%} of the model's importance"
        if share >= 0.01
        else "under 1% of the model's importance"
    )


def has_histogram(quality: dict | None) -> bool:
    histogram = (quality or {}).get("histogram") or {}
    return bool(histogram.get("edges") and histogram.get("current"))


def section_for(report: Report, run: ScoringRun) -> Section:
    section = Section(run=run, status=run_status(run))
    if run.quality:
        section.checks = quality_checks(run.quality)
        section.features = drifting_features(run.quality)
        section.baseline = levels.baseline_text(run.quality.get("baseline"))
        section.has_chart = has_histogram(run.quality)
        section.content_id = f"report-{report.id}-run-{run.id}@dropscore"
    return section


def report_url(report: Report) -> str:
    # The portal's URL of the "report" page; scoring never imports portal.
    return f"{settings.SITE_URL.rstrip('/')}/reports/{report.id}/"


def date_text(first: date | None, last: date | None) -> str:
    if first is None:
        return ""
    if first == last:
        return first.isoformat()
    return f"{first.isoformat()} to {last.isoformat()}"


def headline(worst_sections: list[Section], worst: LightCount, model_count: int) -> str:
    """'churn drifted', 'churn and 1 more failed', '3 models scored': in models, not runs (a
    champion and its challenger, or a model's runs of several dates, are one model).

    `worst_sections` are the first of the runs at the worst light (`worst`): their verbs
    are the subject's when they are all of them and agree."""
    if worst.status == OK and model_count > 1:
        return f"{model_count:,} models scored"
    if not worst_sections:
        return "nothing scored"
    first = worst_sections[0]
    # A challenger's drift is not the live model's: the subject says whose it is.
    names = first.deployment.name + (" (challenger)" if first.run.role == "challenger" else "")
    if worst.models > 1:
        names += f" and {worst.models - 1:,} more"
    verbs = {section.verb for section in worst_sections}
    if len(verbs) == 1 and len(worst_sections) == worst.count:
        return f"{names} {verbs.pop()}"
    return f"{names} {VERBS[worst.status]}"


# --- a report of any size: worst first, in a fixed number of queries ------------------------

# The email of a report is bounded whatever the number of models: the alerts and failures in
# detail (up to DETAILED_IN_EMAIL, the first CHARTS_IN_EMAIL with their chart), then the rest
# one line each (up to LINES_IN_EMAIL); the report's page pages through all of them.
DETAILED_IN_EMAIL = 20
SMALL_REPORT = 10  # up to this many models, each is in detail, as a small team expects
CHARTS_IN_EMAIL = 5
LINES_IN_EMAIL = 100
PER_PAGE = 25
COMPARISONS_IN_EMAIL = 50
ATTENTION = (FAILED, ALERT)


# The owners of a report's models: the reader's own first, then each team's by name.
OWNER_ORDER = Lower("deployment__team__name").asc(nulls_first=True)


def ranked_runs(report: Report) -> QuerySet:
    """The report's runs, each with its light (`light`, as run_status says) and its rank
    (`rank`, the index in SEVERITY), worst first, then by owner, model name and date."""
    failed = (ScoringRun.Status.FAILED, ScoringRun.Status.RETRYING)
    light = Case(
        When(status__in=failed, then=Value(FAILED)),
        When(quality_status__in=SEVERITY, then=F("quality_status")),
        default=Value(OK),
        output_field=CharField(),
    )
    rank = Case(
        *(When(light=name, then=Value(index)) for index, name in enumerate(SEVERITY)),
        output_field=IntegerField(),
    )
    return (
        report.runs.annotate(light=light)
        .annotate(rank=rank)
        .select_related("deployment__team", "version")
        .order_by("-rank", OWNER_ORDER, Lower("deployment__name"), "date", "id")
    )


def light_counts(runs: QuerySet) -> dict[str, LightCount]:
    """How many runs, and of how many models, at each light, worst first (one query)."""
    found = {
        light: (count, models)
        for light, count, models in runs.order_by()
        .values_list("light")
        .annotate(count=Count("id"), models=Count("deployment", distinct=True))
    }
    return {name: LightCount(name, *found.get(name, (0, 0))) for name in reversed(SEVERITY)}


def summary_context(report: Report, runs: QuerySet, counts: dict[str, LightCount]) -> dict:
    """The top of the email and the page: the worst light, the headline, the counts. The
    report counts models (`model_count`: a champion and its challenger are one) and runs
    (`run_count`: what its lights, lists and pages count)."""
    worst = next((light for light in counts.values() if light.count), counts[OK])
    worst_runs = runs.filter(light=worst.status)[:DETAILED_IN_EMAIL]
    worst_sections = [section_for(report, run) for run in worst_runs]
    span = runs.order_by().aggregate(
        first=Min("date"),
        last=Max("date"),
        models=Count("deployment", distinct=True),
        teams=Count("deployment__team", distinct=True),
    )
    return {
        "report": report,
        "status": worst.status,
        "word": worst.status.upper(),
        "fg": worst.fg,
        "bg": worst.bg,
        "headline": headline(worst_sections, worst, span["models"]),
        "dates": date_text(span["first"], span["last"]),
        "model_count": span["models"],
        # A person's report with their teams' models: each owner's under a heading of its
        # own, so a team's model never reads as theirs. A team's report says whose it is once.
        "grouped": bool(span["teams"]) and not report.team_id,
        "run_count": sum(light.count for light in counts.values()),
        "counts": list(counts.values()),
        "summary": ", ".join(
            f"{light.count:,} {light.status}" for light in counts.values() if light.count
        ),
        "url": report_url(report),
        "comparisons": comparisons(report),
        "online_checks": online_checks(report),
    }


def comparisons(report: Report) -> list[Comparison]:
    """The challengers of the report's runs against their champions, for the days scored."""
    runs = report.runs.all()
    return list(
        Comparison.objects.filter(challenger_run__in=runs)
        .select_related("deployment", "champion_run__version", "challenger_run__version")
        .order_by("deployment__name", "date")[:COMPARISONS_IN_EMAIL]
    )


@dataclass
class OnlineLine:
    """One online model of a report: its latest day of traffic against its batch run."""

    check: OnlineCheck

    @property
    def status(self) -> str:
        return self.check.status

    @property
    def fg(self) -> str:
        return LIGHTS.get(self.status, NO_LIGHT)[0]

    @property
    def bg(self) -> str:
        return LIGHTS.get(self.status, NO_LIGHT)[1]

    @property
    def word(self) -> str:
        return self.status.upper()

    @property
    def features(self) -> list[Check]:
        """The drifted ones only: a calm day's top features say nothing."""
        drifted = drifting_features(self.check.quality or {})
        return [feature for feature in drifted if feature.status in (WARNING, ALERT)][:3]

    @property
    def baseline(self) -> str:
        return levels.baseline_text((self.check.quality or {}).get("baseline"))


# Online statuses, alerts first; a day without traffic or without a batch run says so after
# the warnings, above the calm days.
ONLINE_ORDER = (ALERT, WARNING, OnlineCheck.Status.NO_BATCH, OnlineCheck.Status.NO_TRAFFIC, OK)


def online_checks(report: Report) -> list[OnlineLine]:
    """The latest online check of each online model of the report, alerts first (one query)."""
    newest = OnlineCheck.objects.filter(deployment=OuterRef("deployment")).order_by("-date")
    rank = Case(
        *(When(status=name, then=Value(index)) for index, name in enumerate(ONLINE_ORDER)),
        default=Value(len(ONLINE_ORDER)),
        output_field=IntegerField(),
    )
    checks = (
        OnlineCheck.objects.filter(
            deployment__in=report.runs.values("deployment"),
            deployment__online=True,
            date=Subquery(newest.values("date")[:1]),
        )
        .select_related("deployment", "run")
        .annotate(rank=rank)
        .order_by("rank", Lower("deployment__name"))[:LINES_IN_EMAIL]
    )
    return [OnlineLine(check) for check in checks]


def report_context(report: Report) -> dict:
    """What the email shows, bounded: the counts, the alerts and failures in detail (the
    first few with charts), then the other models one line each, up to a cap. A small
    report shows every model in detail."""
    runs = ranked_runs(report)
    counts = light_counts(runs)
    context = summary_context(report, runs, counts)
    small = context["run_count"] <= SMALL_REPORT
    attention = context["run_count"] if small else sum(counts[name].count for name in ATTENTION)
    detailed = min(attention, DETAILED_IN_EMAIL)
    sections = [section_for(report, run) for run in runs[:detailed]]
    charted = [section for section in sections if section.has_chart][:CHARTS_IN_EMAIL]
    for section in sections:
        section.has_chart = section in charted
    lines = [
        Section(run=run, status=run.light)
        for run in runs.defer("quality")[detailed : detailed + LINES_IN_EMAIL]
    ]
    return {
        **context,
        "sections": sections,
        "section_groups": by_owner(sections),
        "line_groups": by_owner(lines),
        "sections_title": "" if small or not sections else "Alerts and failures",
        "attention_more": attention - detailed,
        "lines": lines,
        "lines_more": context["run_count"] - detailed - len(lines),
    }


def page_context(report: Report, status: str | None, page: int) -> dict:
    """What the report's page shows: the counts, then one page of the runs at `status` (all
    when None), each in detail, by owner (the reader's own models, then each team's), worst
    first within each; past the last page, the last."""
    runs = ranked_runs(report)
    counts = light_counts(runs)
    shown = runs.filter(light=status) if status else runs
    shown = shown.order_by(OWNER_ORDER, "-rank", Lower("deployment__name"), "date", "id")
    page_of = Paginator(shown, PER_PAGE).get_page(page)
    sections = [section_for(report, run) for run in page_of]
    return {
        **summary_context(report, runs, counts),
        "filter_status": status or "",
        "page": page_of,
        "sections": sections,
        "groups": by_owner(sections),
    }
