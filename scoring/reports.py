"""Emails to model owners: one function per kind, three templates per kind.

`templates/email/<kind>_subject.txt`, `<kind>.txt` and `<kind>.html`.

The report of a batch is one email per user: each of their models with its status, rows and
data quality, and a chart of the score distribution. `report_context` feeds both the email and
the report's page in the portal, so the two always say the same thing.
"""

import io
import logging
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.mime.image import MIMEImage

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.db.models import F, Q
from django.template.loader import render_to_string
from django.utils import timezone

from scoring.models import Batch, Report, ScoringRun

log = logging.getLogger(__name__)

OK = "ok"
WARNING = "warning"
ALERT = "alert"
FAILED = "failed"
BADNESS = [OK, WARNING, ALERT, FAILED]  # worst last

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

MAX_SEND_ATTEMPTS = 10
DUE_REPORTS_PER_TICK = 100


def make_message(kind: str, to: str | list[str], context: dict) -> EmailMultiAlternatives:
    context = {**context, "site_url": settings.SITE_URL.rstrip("/")}
    subject = " ".join(render_to_string(f"email/{kind}_subject.txt", context).split())
    message = EmailMultiAlternatives(
        subject,
        render_to_string(f"email/{kind}.txt", context),
        to=[to] if isinstance(to, str) else list(to),
    )
    message.attach_alternative(render_to_string(f"email/{kind}.html", context), "text/html")
    return message


def send_run_failed(run) -> None:
    """Tell the owner at once: which model, which slice, what went wrong, what happens next."""
    deployment = run.deployment
    if not deployment.email:
        log.warning("run %s failed but %s has no report email", run.id, deployment)
        return
    context = {
        "run": run,
        "deployment": deployment,
        "gave_up": run.status == run.FAILED,
    }
    make_message("run_failed", deployment.email, context).send()


# --- statuses ----------------------------------------------------------------------


def run_status(run: ScoringRun) -> str:
    """ok, warning, alert or failed: a run still retrying counts as failed until it succeeds."""
    if run.status in (ScoringRun.FAILED, ScoringRun.RETRYING):
        return FAILED
    return run.quality_status if run.quality_status in BADNESS else OK


def worst(statuses: Iterable[str]) -> str:
    return max(statuses, key=BADNESS.index, default=OK)


def build_reports(batch: Batch) -> list[Report]:
    """One report per owner of the batch's runs, with those runs and the worst of their statuses.

    Calling it again (a retried batch, a second worker) adds runs and updates the status,
    never a second report.
    """
    by_owner: dict[int, list[ScoringRun]] = defaultdict(list)
    for run in ScoringRun.objects.filter(batch=batch).select_related("deployment"):
        by_owner[run.deployment.owner_id].append(run)
    reports = []
    for owner_id, runs in sorted(by_owner.items()):
        with transaction.atomic():
            report, _ = Report.objects.get_or_create(
                batch=batch, owner_id=owner_id, defaults={"status": worst(map(run_status, runs))}
            )
            report.runs.add(*runs)
            status = worst(map(run_status, report.runs.all()))
            if report.status != status:
                report.status = status
                report.save(update_fields=["status"])
        reports.append(report)
    return reports


# --- what a report says ----------------------------------------------------------------


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
class Section:
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
    def fg(self) -> str:
        return LIGHTS[self.status][0]

    @property
    def bg(self) -> str:
        return LIGHTS[self.status][1]

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


def human_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def baseline_text(quality: dict) -> str:
    baseline = quality.get("baseline")
    if not baseline:
        return "none: this is the first run and the package has no reference scores"
    rows = f"{baseline['rows']:,}" if baseline.get("rows") is not None else "?"
    if baseline.get("kind") == "run":
        return f"the previous run, of {baseline.get('date', '?')} ({rows} rows)"
    return f"the reference scores in the package ({rows} scores)"


def quality_checks(quality: dict) -> list[Check]:
    """The quality table: only the checks that were computed for this run."""
    thresholds = quality.get("thresholds") or {}
    psi_warn = thresholds.get("psi_warn", settings.PSI_WARN)
    psi_alert = thresholds.get("psi_alert", settings.PSI_ALERT)
    auc_warn = thresholds.get("adversarial_warn", settings.ADVERSARIAL_WARN)
    auc_alert = thresholds.get("adversarial_alert", settings.ADVERSARIAL_ALERT)
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
    return [
        Check(
            feature.get("name", "?"),
            f"{feature['psi']:.3f}" if feature.get("psi") is not None else "—",
            "",
            feature.get("status"),
        )
        for feature in quality.get("features") or []
    ]


def has_histogram(quality: dict | None) -> bool:
    histogram = (quality or {}).get("histogram") or {}
    return bool(histogram.get("edges") and histogram.get("current"))


def section_for(report: Report, run: ScoringRun) -> Section:
    section = Section(run=run, status=run_status(run))
    if run.quality:
        section.checks = quality_checks(run.quality)
        section.features = drifting_features(run.quality)
        section.baseline = baseline_text(run.quality)
        section.has_chart = has_histogram(run.quality)
        section.content_id = f"report-{report.id}-run-{run.id}@dropscore"
    return section


def report_url(report: Report) -> str:
    # The portal's URL of the "report" page; scoring never imports portal.
    return f"{settings.SITE_URL.rstrip('/')}/reports/{report.id}/"


def date_text(runs: list[ScoringRun]) -> str:
    dates = sorted({run.date for run in runs})
    if not dates:
        return ""
    if len(dates) == 1:
        return dates[0].isoformat()
    return f"{dates[0].isoformat()} to {dates[-1].isoformat()}"


def headline(sections: list[Section], status: str) -> str:
    """'churn drifted', 'churn and 1 more failed', '3 models scored'."""
    if status == OK and len(sections) > 1:
        return f"{len(sections)} models scored"
    worst_sections = [section for section in sections if section.status == status]
    if not worst_sections:
        return "nothing scored"
    names = worst_sections[0].deployment.name
    if len(worst_sections) > 1:
        names += f" and {len(worst_sections) - 1} more"
    verbs = {section.verb for section in worst_sections}
    return f"{names} {verbs.pop() if len(verbs) == 1 else VERBS[status]}"


def report_context(report: Report) -> dict:
    """What the email and the page show: the models worst first, with their checks."""
    runs = list(report.runs.select_related("deployment", "version"))
    sections = sorted(
        (section_for(report, run) for run in runs),
        key=lambda s: (-BADNESS.index(s.status), s.deployment.name.lower(), s.run.date),
    )
    status = worst(section.status for section in sections)
    counts = [
        f"{count} {name}"
        for name in reversed(BADNESS)
        if (count := sum(section.status == name for section in sections))
    ]
    fg, bg = LIGHTS[status]
    return {
        "report": report,
        "status": status,
        "word": status.upper(),
        "fg": fg,
        "bg": bg,
        "headline": headline(sections, status),
        "dates": date_text(runs),
        "model_count": len(sections),
        "summary": ", ".join(counts),
        "sections": sections,
        "url": report_url(report),
    }


# --- the chart ---------------------------------------------------------------------


def baseline_label(quality: dict) -> str:
    baseline = quality.get("baseline") or {}
    if baseline.get("kind") == "run":
        return f"previous run ({baseline.get('date', '?')})"
    return "reference scores"


def score_chart_png(quality: dict) -> bytes:
    """This run's score distribution against the baseline's, as a 600×260 PNG."""
    # Figure and the Agg canvas directly, not pyplot: no global state, safe in threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    histogram = quality["histogram"]
    edges = [float(edge) for edge in histogram["edges"]]
    if not all(math.isfinite(edge) for edge in edges):
        raise ValueError("the histogram's edges must be finite")
    figure = Figure(figsize=(6, 2.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.stairs(
        histogram["current"],
        edges,
        fill=True,
        facecolor="#3358d44d",
        edgecolor="#3358d4",
        linewidth=1.6,
        label="this run",
    )
    if histogram.get("baseline"):
        axes.stairs(
            histogram["baseline"],
            edges,
            color="#1d2330",
            linewidth=1.4,
            linestyle="--",
            label=baseline_label(quality),
        )
    axes.set_xlabel("score", fontsize=9)
    axes.set_ylabel("share of rows", fontsize=9)
    axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes.tick_params(labelsize=8)
    axes.set_ylim(bottom=0)
    axes.spines[["top", "right"]].set_visible(False)
    axes.legend(loc="best", fontsize=8, frameon=False)
    figure.tight_layout(pad=0.6)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# --- sending -----------------------------------------------------------------------


def recipients(report: Report) -> list[str]:
    """The report emails of the report's models; the owner's account email when none has one."""
    emails = {run.deployment.email for run in report.runs.select_related("deployment")}
    emails.discard("")
    if not emails and report.owner.email:
        emails = {report.owner.email}
    return sorted(emails)


def report_message(report: Report, to: list[str]) -> EmailMultiAlternatives:
    context = report_context(report)
    charts = []
    for section in context["sections"]:
        if section.has_chart:
            try:
                charts.append((section.content_id, score_chart_png(section.run.quality)))
            except Exception:
                # A bad histogram costs the chart, not the email.
                log.exception("no chart for run %s in report %s", section.run.id, report.id)
                section.has_chart = False
    message = make_message("report", to, context)
    if charts:
        # multipart/related: the HTML shows the images by Content-ID instead of listing them.
        message.mixed_subtype = "related"
    for content_id, png in charts:
        image = MIMEImage(png, "png")
        image.add_header("Content-ID", f"<{content_id}>")
        image.add_header(
            "Content-Disposition", "inline", filename=content_id.split("@")[0] + ".png"
        )
        message.attach(image)
    return message


def retry_delay(attempts: int) -> timedelta:
    return timedelta(minutes=min(2**attempts, 60))


def due(now: datetime) -> Q:
    return Q(sent_at__isnull=True, send_attempts__lt=MAX_SEND_ATTEMPTS) & (
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    )


def claim(report: Report, now: datetime) -> bool:
    """Take the report for one attempt, so the engine and tick never both send it.

    The conditional update moves `next_attempt_at` past `now`: the retry time if this attempt
    fails, and a lease if this process dies while sending.
    """
    report.refresh_from_db(fields=["sent_at", "send_attempts", "next_attempt_at"])
    next_attempt_at = now + retry_delay(report.send_attempts + 1)
    claimed = Report.objects.filter(
        due(now), id=report.id, send_attempts=report.send_attempts
    ).update(next_attempt_at=next_attempt_at)
    if claimed:
        report.next_attempt_at = next_attempt_at
    return bool(claimed)


def send_report(report: Report, now: datetime | None = None) -> bool:
    """Email the report: True when it went out, or there was no address to send it to.

    Never raises: a mail server that is down must not fail the run. The report then stays
    unsent with the error, and tick tries again later (`send_due_reports`). False too when
    the report was sent already, is being sent by another process, or is not due yet.
    """
    now = now or timezone.now()
    if not claim(report, now):
        return False
    try:
        to = recipients(report)
        if to:
            report_message(report, to).send()
        else:
            log.warning(
                "report %s: %s has no email address, nothing to send", report.id, report.owner
            )
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        Report.objects.filter(id=report.id).update(
            send_attempts=F("send_attempts") + 1, send_error=error
        )
        report.refresh_from_db(fields=["send_attempts", "send_error"])
        if report.send_attempts >= MAX_SEND_ATTEMPTS:
            log.error(
                "report %s: gave up after %s attempts: %s", report.id, report.send_attempts, error
            )
        else:
            log.warning(
                "report %s not sent (attempt %s): %s", report.id, report.send_attempts, error
            )
        return False
    Report.objects.filter(id=report.id).update(sent_at=now, send_error="")
    report.sent_at, report.send_error = now, ""
    return True


def send_due_reports(now: datetime) -> int:
    """For tick: send the reports a mail server did not take, backing off; returns how many went."""
    reports = Report.objects.filter(due(now)).select_related("owner").order_by("created_at")
    return sum(send_report(report, now) for report in reports[:DUE_REPORTS_PER_TICK])
