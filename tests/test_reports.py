"""Reports: one email per user per batch, its retries when the mail server is down, its page.

Runs are written to the database as the engine and the quality checks leave them: no worker.
"""

import io
import re
import time
from datetime import timedelta

import pytest
from django.core import mail
from django.db import connection
from django.test.utils import CaptureQueriesContext
from PIL import Image

from scoring.models import Batch, PackageVersion, Report, ScoringRun
from scoring.reports import chart, content, outbox
from scoring.reports import mail as report_mail
from tests.factories.reports import DAY, NOW, as_challenger, deployment, quality, run
from tests.factories.runs import histogram, make_models
from tests.factories.web import logged_in

pytestmark = pytest.mark.django_db

LOCMEM = "django.core.mail.backends.locmem.EmailBackend"


# --- helpers -------------------------------------------------------------------


@pytest.fixture
def batch() -> Batch:
    return Batch.objects.create(created_at=NOW, finished_at=NOW)


@pytest.fixture
def alice_models(owner, batch) -> dict[str, ScoringRun]:
    """Alice's three models in the batch: one drifted, one drifting, one fine."""
    return {
        "churn": run(batch, deployment(owner, "churn", "risk-team@bank.example"), "alert"),
        "spend": run(batch, deployment(owner, "spend"), "warning"),
        "limits": run(batch, deployment(owner, "limits"), "ok"),
    }


@pytest.fixture
def mallory_model(outsider, batch) -> ScoringRun:
    return run(batch, deployment(outsider, "fraud"), "ok")


def report_of(user) -> Report:
    return Report.objects.get(owner=user)


def sent_to(user, messages) -> mail.EmailMultiAlternatives:
    found = [message for message in messages if user.email in message.to]
    assert len(found) == 1, [message.to for message in messages]
    return found[0]


# --- building reports --------------------------------------------------------------


def test_it_builds_one_report_per_owner_with_the_worst_status(
    owner, outsider, batch, alice_models, mallory_model
):
    built = content.build_reports(batch)

    assert {report.owner for report in built} == {owner, outsider}
    assert report_of(owner).status == "alert"
    assert set(report_of(owner).runs.all()) == set(alice_models.values())
    assert report_of(outsider).status == "ok"
    assert list(report_of(outsider).runs.all()) == [mallory_model]


def test_building_twice_does_not_double_and_updates_the_status(owner, batch, alice_models):
    content.build_reports(batch)
    late = run(batch, deployment(owner, "limits-v2"), "retrying")
    again = content.build_reports(batch)

    assert Report.objects.count() == 1
    assert [report.id for report in again] == [report_of(owner).id]
    assert report_of(owner).runs.count() == 4
    assert report_of(owner).status == "failed"
    assert late in report_of(owner).runs.all()


def test_a_run_without_quality_counts_as_ok_and_a_retrying_one_as_failed(owner, batch):
    fine = run(batch, deployment(owner, "fine"), quality=None, quality_status="")
    retrying = run(batch, deployment(owner, "flaky"), "retrying")

    assert content.run_status(fine) == "ok"
    assert content.run_status(retrying) == "failed"


# --- the email ---------------------------------------------------------------------


def test_it_sends_one_email_per_user_per_batch(
    owner, outsider, batch, alice_models, mallory_model, mailoutbox
):
    for report in content.build_reports(batch):
        assert report_mail.send_report(report, NOW) is True
    for report in content.build_reports(batch):  # a second finish of the batch
        assert report_mail.send_report(report, NOW) is False

    assert len(mailoutbox) == 2
    alice = next(message for message in mailoutbox if "alice@bank.example" in message.to)
    assert sorted(alice.to) == ["alice@bank.example", "risk-team@bank.example"]
    assert sent_to(outsider, mailoutbox).to == ["mallory@telco.example"]
    assert all(report.sent_at == NOW and not report.send_error for report in Report.objects.all())


def test_the_subject_names_the_worst_status(
    owner, outsider, batch, alice_models, mallory_model, mailoutbox
):
    for report in content.build_reports(batch):
        report_mail.send_report(report, NOW)

    assert sent_to(owner, mailoutbox).subject == (
        "[Dropscore] ALERT — churn drifted (3 models, 2026-11-23)"
    )
    assert sent_to(outsider, mailoutbox).subject == "[Dropscore] OK — fraud scored (2026-11-23)"


def test_a_failed_run_makes_the_subject_say_failed(owner, batch, alice_models, mailoutbox):
    run(batch, deployment(owner, "R&D score"), "failed", attempts=3)
    [report] = content.build_reports(batch)
    report_mail.send_report(report, NOW)

    assert mailoutbox[0].subject == "[Dropscore] FAILED — R&D score failed (4 models, 2026-11-23)"
    assert "ValueError: column 'income' is missing" in mailoutbox[0].body
    assert "Attempt:  3 of 3" in mailoutbox[0].body


def test_the_subject_says_when_several_models_are_fine(owner, batch, mailoutbox):
    run(batch, deployment(owner, "churn"), "ok")
    run(batch, deployment(owner, "spend"), "ok")
    [report] = content.build_reports(batch)
    report_mail.send_report(report, NOW)

    assert mailoutbox[0].subject == "[Dropscore] OK — 2 models scored (2026-11-23)"


def test_the_subject_says_what_went_wrong_when_it_is_not_drift(owner, batch, mailoutbox):
    shrunk = {
        **quality("ok", rows=40000, rows_change=-0.59, rows_status="alert"),
        "status": "alert",
    }
    run(batch, deployment(owner, "churn"), quality=shrunk, quality_status="alert", rows=40000)
    [report] = content.build_reports(batch)
    report_mail.send_report(report, NOW)

    assert mailoutbox[0].subject == "[Dropscore] ALERT — churn changed in size (2026-11-23)"
    assert "[ALERT] Rows: 40,000 (-59.0% vs 98,000 in the baseline)" in mailoutbox[0].body


def test_the_text_and_html_show_each_model_with_its_quality(owner, batch, alice_models, mailoutbox):
    [report] = content.build_reports(batch)
    report_mail.send_report(report, NOW)

    message = mailoutbox[0]
    html, mimetype = message.alternatives[0]
    assert mimetype == "text/html"
    for body in (message.body, html):
        for name in ("churn", "spend", "limits"):
            assert name in body
        assert "100,000" in body  # rows
        assert "2026-11-22" in body  # the slice used, and the baseline run
        assert "42.5 s" in body
        assert "1 of 3" in body
        assert "income" in body and "tenure" in body  # drifting features
        assert "the previous run, of 2026-11-22 (98,000 rows)" in body
        assert f"/reports/{report.id}/" in body
    assert "[ALERT] Score PSI: 0.312" in message.body
    assert "[WARNING] Score PSI: 0.140" in message.body
    assert "[OK] Score PSI: 0.012" in message.body
    assert "[ALERT] income: PSI 0.41" in message.body
    assert "[ALERT] Adversarial AUC: 0.710 ± 0.006" in message.body
    # Worst first.
    assert message.body.index("churn") < message.body.index("spend") < message.body.index("limits")
    # Traffic lights in the HTML: the alert colour next to the alert words.
    assert 'color:#c0362c;background:#fdecea">ALERT' in html
    assert 'color:#9a6700;background:#fff4d6">WARNING' in html
    assert 'color:#1a7f37;background:#e7f5ec">OK' in html


def test_the_chart_is_an_inline_image_the_html_refers_to(owner, batch, alice_models, mailoutbox):
    [report] = content.build_reports(batch)
    report_mail.send_report(report, NOW)

    message = mailoutbox[0]
    html = message.alternatives[0][0]
    parsed = message.message()
    assert parsed.get_content_type() == "multipart/related"
    images = [part for part in parsed.walk() if part.get_content_type() == "image/png"]
    assert len(images) == 3
    for image in images:
        content_id = image["Content-ID"].strip("<>")
        assert f'src="cid:{content_id}"' in html
        assert image.get_content_disposition() == "inline"
        png = Image.open(io.BytesIO(image.get_payload(decode=True)))
        assert png.format == "PNG" and png.size == (600, 260)


def test_a_run_without_a_histogram_gets_no_chart(owner, batch, mailoutbox):
    run(batch, deployment(owner, "churn"), "ok", quality=quality("ok", histogram=None))
    [report] = content.build_reports(batch)
    report_mail.send_report(report, NOW)

    assert "cid:" not in mailoutbox[0].alternatives[0][0]
    assert not mailoutbox[0].attachments


def test_the_chart_draws_without_a_baseline(owner):
    png = chart.score_chart_png(quality("ok", baseline=None, histogram=histogram(baseline=False)))

    assert Image.open(io.BytesIO(png)).size == (600, 260)


def test_reports_go_to_the_account_email_when_no_model_has_one(owner, batch, mailoutbox):
    run(batch, deployment(owner, "churn", email=""), "ok")
    [report] = content.build_reports(batch)

    assert report_mail.send_report(report, NOW) is True
    assert mailoutbox[0].to == ["alice@bank.example"]


def test_a_report_with_no_address_at_all_is_marked_sent(owner, batch, mailoutbox):
    owner.email = ""
    owner.save()
    run(batch, deployment(owner, "churn", email=""), "ok")
    [report] = content.build_reports(batch)

    assert report_mail.send_report(report, NOW) is True
    assert mailoutbox == []
    report.refresh_from_db()
    assert report.sent_at == NOW
    assert report_mail.send_due_reports(NOW + timedelta(hours=2)) == 0


# --- a mail server that is down --------------------------------------------------


def test_a_mail_server_that_is_down_leaves_the_report_for_tick(
    owner, batch, alice_models, smtp_down, mailoutbox
):
    [report] = content.build_reports(batch)

    assert report_mail.send_report(report, NOW) is False
    report.refresh_from_db()
    assert report.sent_at is None
    assert report.send_attempts == 1
    assert "Connection" in report.send_error or "refused" in report.send_error.lower()
    # Tick backs off: not again within two minutes.
    assert report_mail.send_due_reports(NOW + timedelta(minutes=1)) == 0

    smtp_down.EMAIL_BACKEND = LOCMEM
    assert report_mail.send_due_reports(NOW + timedelta(minutes=3)) == 1
    assert report_mail.send_due_reports(NOW + timedelta(hours=3)) == 0

    assert len(mailoutbox) == 1
    assert mailoutbox[0].subject.startswith("[Dropscore] ALERT")
    report.refresh_from_db()
    assert report.sent_at == NOW + timedelta(minutes=3)
    assert report.send_error == ""


def test_tick_gives_up_after_ten_attempts_and_keeps_the_error(owner, batch, smtp_down):
    run(batch, deployment(owner, "churn"), "ok")
    [report] = content.build_reports(batch)

    moment = NOW
    for _ in range(12):
        report_mail.send_due_reports(moment)
        moment += timedelta(minutes=61)

    report.refresh_from_db()
    assert report.send_attempts == outbox.MAX_SEND_ATTEMPTS
    assert report.sent_at is None
    assert report.send_error
    smtp_down.EMAIL_BACKEND = LOCMEM
    assert report_mail.send_due_reports(moment) == 0


def test_the_backoff_doubles_up_to_an_hour():
    assert [outbox.retry_delay(n).total_seconds() / 60 for n in (1, 2, 3, 5, 6, 9)] == [
        2,
        4,
        8,
        32,
        60,
        60,
    ]


def test_a_report_being_sent_is_not_taken_by_tick(owner, batch, mailoutbox):
    run(batch, deployment(owner, "churn"), "ok")
    [report] = content.build_reports(batch)
    assert outbox.claim(report, NOW)  # the engine is sending it right now

    assert report_mail.send_due_reports(NOW + timedelta(seconds=30)) == 0
    assert mailoutbox == []


# --- the page ----------------------------------------------------------------------


@pytest.fixture
def alice_report(batch, alice_models, mallory_model) -> Report:
    content.build_reports(batch)
    return Report.objects.get(runs=alice_models["churn"])


def test_the_page_shows_the_report_to_its_owner(owner, alice_report, alice_models):
    response = logged_in(owner).get(f"/reports/{alice_report.id}/")

    assert response.status_code == 200
    page = response.content.decode()
    for name in ("churn", "spend", "limits", "income", "Score PSI", "0.312", "100,000"):
        assert name in page
    churn = alice_models["churn"]
    assert f'src="/reports/{alice_report.id}/chart-{churn.id}.png"' in page


def test_staff_see_any_report(staff, alice_report):
    response = logged_in(staff).get(f"/reports/{alice_report.id}/")

    assert response.status_code == 200
    assert "report of alice" in response.content.decode()


def test_an_outsider_gets_404_for_the_page_and_its_charts(outsider, alice_report, alice_models):
    client = logged_in(outsider)
    churn = alice_models["churn"]

    assert client.get(f"/reports/{alice_report.id}/").status_code == 404
    assert client.get(f"/reports/{alice_report.id}/chart-{churn.id}.png").status_code == 404


def test_the_page_needs_a_login(client, alice_report):
    response = client.get(f"/reports/{alice_report.id}/")

    assert response.status_code == 302
    assert "/login/" in response["Location"]


def test_the_chart_is_a_png(owner, alice_report, alice_models):
    churn = alice_models["churn"]
    response = logged_in(owner).get(f"/reports/{alice_report.id}/chart-{churn.id}.png")

    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (600, 260)


def test_a_chart_of_a_run_not_in_the_report_is_404(owner, staff, alice_report, mallory_model):
    url = f"/reports/{alice_report.id}/chart-{mallory_model.id}.png"

    assert logged_in(owner).get(url).status_code == 404
    assert logged_in(staff).get(url).status_code == 404


# --- a report of a thousand models -------------------------------------------------------

FLEET = {"failed": 12, "alert": 30, "warning": 58, "ok": 900}


def fleet_report(owner, batch, lights: dict[str, int] = FLEET) -> Report:
    """One report of many runs of `owner`, made in bulk: lights in the order of `lights`."""
    models = make_models(owner, sum(lights.values()), prefix="m")
    versions = {v.deployment_id: v for v in PackageVersion.objects.filter(deployment__in=models)}
    statuses = [light for light, count in lights.items() for _ in range(count)]
    started = NOW - timedelta(minutes=3)
    runs = []
    for model, light in zip(models, statuses, strict=True):
        run_ = ScoringRun(
            deployment=model,
            version=versions[model.id],
            batch=batch,
            date=DAY,
            slice_date=DAY,
            status="succeeded",
            attempts=1,
            rows=100000,
            started_at=started,
            finished_at=started + timedelta(seconds=42.5),
        )
        if light == "failed":
            run_.status, run_.rows, run_.error = "failed", None, "RuntimeError: the model broke"
        else:
            run_.quality, run_.quality_status = quality(light), light
        runs.append(run_)
    ScoringRun.objects.bulk_create(runs, batch_size=500)
    [report] = content.build_reports(batch)
    return report


def test_a_report_of_a_thousand_models_is_one_bounded_email(owner, batch, mailoutbox):
    report = fleet_report(owner, batch)

    started = time.perf_counter()
    with CaptureQueriesContext(connection) as queries:
        assert report_mail.send_report(report, NOW) is True
    seconds = time.perf_counter() - started
    [message] = mailoutbox
    size = len(message.message().as_bytes())
    print(f"report of 1,000 models: {size / 1024:.0f} KiB, {len(queries)} queries, {seconds:.2f} s")

    assert size < 1024 * 1024
    images = [p for p in message.message().walk() if p.get_content_type() == "image/png"]
    assert len(images) == content.CHARTS_IN_EMAIL
    assert (
        message.subject
        == "[Dropscore] FAILED — m-000 and 11 more failed (1,000 models, 2026-11-23)"
    )
    body, html = message.body, message.alternatives[0][0]
    assert "1,000 models (12 failed, 30 alert, 58 warning, 900 ok)" in body
    assert "<b>12</b> failed" in html and "<b>900</b> ok" in html
    # Failures, then alerts in detail, up to 20; the other 22 and the rest one line each.
    assert body.count("== m-") == html.count('<h3 style="margin:0 0 6px') == 20
    assert "And 22 more alerts and failures" in body and "And 22 more alerts and failures" in html
    assert len(re.findall(r"(?m)^  \[[A-Z]+\] m-\d+: ", body)) == content.LINES_IN_EMAIL
    assert "and 880 more on the report page" in body and "And 880 more on the" in html
    # A fixed number of queries, not one per run.
    assert len(queries) <= 15, len(queries)


def test_the_number_of_queries_of_a_report_does_not_grow_with_its_runs(owner, outsider, mailoutbox):
    counted = []
    for user, lights in ((owner, {"alert": 25, "ok": 40}), (outsider, {"alert": 50, "ok": 400})):
        batch = Batch.objects.create(created_at=NOW)
        report = fleet_report(user, batch, lights)
        with CaptureQueriesContext(connection) as queries:
            report_mail.send_report(report, NOW)
        counted.append(len(queries))

    assert counted[0] == counted[1]


def test_the_report_page_pages_through_every_run_and_filters_by_light(owner, batch):
    report = fleet_report(owner, batch)
    client = logged_in(owner)
    expected = set(report.runs.values_list("id", flat=True))

    seen = []
    for number in range(1, 1000 // content.PER_PAGE + 1):
        with CaptureQueriesContext(connection) as queries:
            page = client.get(f"/reports/{report.id}/?page={number}").content.decode()
        assert len(queries) <= 20, len(queries)
        seen += [int(i) for i in re.findall(r'id="run-(\d+)"', page)]
    assert len(seen) == len(expected) == 1000 and set(seen) == expected
    assert "page 40 of 40 · runs 976–1000 of 1000" in page

    alerts = client.get(f"/reports/{report.id}/?status=alert&page=2").content.decode()
    ids = [int(i) for i in re.findall(r'id="run-(\d+)"', alerts)]
    assert len(ids) == 5 and "page 2 of 2 · runs 26–30 of 30" in alerts
    assert set(ScoringRun.objects.filter(id__in=ids).values_list("quality_status", flat=True)) == {
        "alert"
    }
    assert 'href="?status=alert&amp;page=1"' in alerts  # the pager keeps the filter
    beyond = client.get(f"/reports/{report.id}/?page=99").content.decode()
    assert "page 40 of 40" in beyond


@pytest.mark.parametrize(
    "query, message",
    [("status=fine", "status must be one of"), ("page=x", "page must be"), ("page=0", "page must")],
)
def test_a_bad_filter_of_the_report_page_says_what_is_wrong(owner, alice_report, query, message):
    response = logged_in(owner).get(f"/reports/{alice_report.id}/?{query}")

    assert response.status_code == 400
    assert message in response.content.decode()


def test_a_challengers_line_in_a_long_report_and_on_its_page_says_it_is_the_challenger(
    owner, batch, mailoutbox
):
    """Past SMALL_REPORT a model's champion and challenger are two one-line rows of one name
    in the email, and two sections of one name on the page: the challenger's says so."""
    report = fleet_report(owner, batch, {"ok": content.SMALL_REPORT + 1})
    as_challenger(report.runs.get(deployment__name="m-000"))  # beside the champion's run
    content.build_reports(batch)

    assert report_mail.send_report(report, NOW) is True
    [message] = mailoutbox
    body, html = message.body, message.alternatives[0][0]
    assert "  [OK] m-000: 100,000 rows" in body
    assert "  [OK] m-000 (challenger): 100,000 rows" in body
    assert html.count(">m-000</a>") == 2
    assert (
        html.count('>m-000</a> <span style="font-size:12px;color:#667085">challenger</span>') == 1
    )
    page = logged_in(owner).get(f"/reports/{report.id}/?page=1").content.decode()
    assert page.count(">m-000</a>") == 2
    assert page.count('>m-000</a> <span class="note">challenger</span>') == 1


def test_the_subject_says_when_the_worst_run_is_a_challengers(owner, batch, mailoutbox):
    """A challenger drifting against its reference is not the live model drifting."""
    churn = deployment(owner, "churn")
    challenger = as_challenger(run(batch, churn, "ok"))
    challenger.quality, challenger.quality_status = quality("alert"), "alert"
    challenger.save()
    [report] = content.build_reports(batch)

    report_mail.send_report(report, NOW)
    [message] = mailoutbox
    assert message.subject.startswith("[Dropscore] ALERT — churn (challenger) drifted")


def test_a_model_and_its_challenger_are_one_model_in_the_subject_the_email_and_the_page(
    owner, batch, mailoutbox
):
    """A champion's run and its challenger's are two runs of one model: "1 model", not 2."""
    as_challenger(run(batch, deployment(owner, "churn"), "ok"))
    [report] = content.build_reports(batch)

    report_mail.send_report(report, NOW)
    [message] = mailoutbox
    assert message.subject == "[Dropscore] OK — churn scored (2026-11-23)"
    assert "Dropscore report for 2026-11-23: 1 model, 2 runs (2 ok)." in message.body
    assert "Scored 2026-11-23: 1 model, 2 runs.</p>" in message.alternatives[0][0]
    page = logged_in(owner).get(f"/reports/{report.id}/").content.decode()
    assert "Scored 2026-11-23: 1 model, 2 runs (2 ok).</p>" in page
    assert ">all 2</a>" in page  # the chips count runs, as their lights do
    assert page.count('>churn</a> <span class="note">challenger</span>') == 1


def test_a_drifting_champion_and_its_challenger_are_one_model_drifting(owner, batch, mailoutbox):
    churn = deployment(owner, "churn")
    as_challenger(run(batch, churn, "alert"))  # both drifted
    run(batch, deployment(owner, "spend"), "ok")
    [report] = content.build_reports(batch)

    report_mail.send_report(report, NOW)
    [message] = mailoutbox
    assert message.subject == "[Dropscore] ALERT — churn drifted (2 models, 2026-11-23)"
    assert "Dropscore report for 2026-11-23: 2 models, 3 runs (2 alert, 1 ok)." in message.body
