"""The dashboard, a model's quality charts and the status page: what they show, to whom,
and that they ask the database a fixed number of times however many models and runs."""

import json
import re
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from portal import health, listing, status_views
from scoring.models import Batch, Deployment, PackageVersion, Report, ScoringRun
from scoring.packages import roles
from tests.factories.runs import make_fleet, make_models, make_runs, quality

pytestmark = pytest.mark.django_db

# The most SQL queries each page may make, with 200 models and 20,000 runs or with 2 and 10.
QUERY_BOUNDS = {
    # session, user, the user's teams and roles, the count of each status, a page of models
    # with their latest-run subqueries, their versions, their latest runs (one in_bulk), the
    # quota's three (override, active models, stored bytes)
    "/": 10,
    "/models/status/": 10,
    # session, user, the user's roles in teams, model with its champion and challenger,
    # versions, latest check, chart points, 50 runs, their reports, the changes of champion,
    # the challenger's comparisons, a page of its record of changes
    "/models/{id}/": 12,
    # session, user, the user's roles in teams, SELECT 1, run counts, the runs waiting for a
    # slice, the failures' count and page, the count of each light, a page of models with
    # their latest-check subquery, those checks' PSI and AUC
    "/status/": 11,
    "/status.json": 11,
}
STATUS_PAGES = ("/status/", "/status.json")


@pytest.fixture
def services(request):
    """The S3 server and Redis of the session, so every check of the status page can answer."""
    request.getfixturevalue("s3_server")
    request.getfixturevalue("celery_app_configured")


def logged_in(client, user):
    client.force_login(user)
    return client


def chart_data(page: str) -> dict:
    found = re.search(r'<script id="chart-data" type="application/json">(.*?)</script>', page, re.S)
    assert found, "the model page has no chart data"
    return json.loads(found.group(1))


def timed_get(client, url: str):
    started = time.perf_counter()
    response = client.get(url)
    return response, time.perf_counter() - started


# --- bounded queries ------------------------------------------------------------


@pytest.mark.parametrize("path", QUERY_BOUNDS)
def test_each_page_asks_a_fixed_number_of_queries_however_many_models_and_runs(
    path, client, owner, request, capsys, django_assert_max_num_queries
):
    if path in STATUS_PAGES:
        request.getfixturevalue("services")
    logged_in(client, owner)
    first = make_models(owner, 2, prefix="first")
    make_runs(first, 5)
    # A failure of the last 24 hours, so the status page's failures table has a page to read.
    ScoringRun.objects.filter(id=first[0].runs.first().id).update(
        status=ScoringRun.Status.FAILED, quality=None, quality_status=""
    )
    url = path.format(id=first[0].id)
    assert client.get(url).status_code == 200  # templates load once, not in the count

    with CaptureQueriesContext(connection) as few:
        small = client.get(url)
    assert small.status_code == 200

    # Up to 200 models and 20,000 runs: 95 older runs for the first two, 198 more models.
    make_runs(first, 95, days_back=5)
    make_runs(make_models(owner, 198, prefix="more"), 100)
    assert ScoringRun.objects.count() == 20_000

    with django_assert_max_num_queries(QUERY_BOUNDS[path]) as many:
        large, seconds = timed_get(client, url)
    assert large.status_code == 200
    assert len(many) == len(few), [q["sql"][:200] for q in many.captured_queries]
    with capsys.disabled():
        print(
            f"\n{url:<18} {len(many)} queries with 200 models and 20,000 runs, "
            f"{1000 * seconds:.0f} ms ({len(large.content) // 1024} KB)"
        )


# --- the dashboard --------------------------------------------------------------


def test_the_dashboard_shows_each_models_last_run_quality_and_next_run(client, owner):
    churn, spend, fresh = make_models(owner, 3)
    make_runs([churn, spend], 3)
    last = churn.runs.order_by("-date").first()
    last.quality = quality(0.14, 0.58, rows=123_456)
    last.quality_status = "warning"
    last.rows = 123_456
    last.save()
    ScoringRun.objects.filter(deployment=spend).order_by("-date").update(
        status=ScoringRun.Status.FAILED, quality=None, quality_status="", rows=None, error="boom"
    )
    ScoringRun.objects.create(
        deployment=spend,
        version=spend.versions.get(),
        date=timezone.localdate() + timedelta(days=1),
        status=ScoringRun.Status.RUNNING,
        started_at=timezone.now(),
    )

    page = logged_in(client, owner).get("/").content.decode()
    rows = {
        name: row for name, row in re.findall(r'<tr data-model="([^"]+)">(.*?)</tr>', page, re.S)
    }

    assert '<span class="badge succeeded">succeeded</span>' in rows[churn.name]
    assert "123,456 rows · finished 1\xa0hour ago" in rows[churn.name]
    assert 'class="light warning"' in rows[churn.name]
    assert "PSI 0.140 · AUC 0.58" in rows[churn.name]
    assert "UTC" in rows[churn.name]  # the next run
    assert '<span class="badge running">running now</span>' in rows[spend.name]
    assert '<span class="badge failed">failed</span>' in rows[spend.name]
    assert 'class="light none"' in rows[spend.name]
    assert "no runs yet" in rows[fresh.name]


def test_the_dashboard_json_carries_the_same_rows(client, owner):
    models = make_models(owner, 2)
    make_runs(models, 2)

    body = logged_in(client, owner).get("/models/status/").json()

    assert set(body) == {"rows", "quota", "pending", "counts"}
    assert body["rows"].count('class="light ') == 2
    assert body["rows"].count("finished ") == 2


def test_the_dashboard_lists_only_my_own_models_even_for_staff(client, owner, staff):
    make_models(owner, 1, prefix="alice")
    make_models(staff, 1, prefix="sam")

    page = logged_in(client, staff).get("/").content.decode()

    assert 'data-model="sam-000"' in page
    assert 'data-model="alice-000"' not in page


# --- the model page -------------------------------------------------------------


def test_the_model_page_carries_the_chart_data_and_the_top_drifting_features(client, owner):
    (model,) = make_models(owner, 1)
    make_runs([model], 20)
    latest = model.runs.order_by("-date").first()
    latest.quality = quality(0.31, 0.67)
    latest.quality["thresholds"] = {**latest.quality["thresholds"], "psi_warn": 0.15}
    latest.quality_status = "alert"
    latest.save()

    response = logged_in(client, owner).get(f"/models/{model.id}/")
    page = response.content.decode()
    data = chart_data(page)

    checked = list(model.runs.exclude(quality_status="").order_by("date", "id"))
    assert [p["run"] for p in data["runs"]] == [r.id for r in checked]
    assert data["runs"][-1] == {
        "run": latest.id,
        "date": latest.date.isoformat(),
        "status": "alert",
        "psi": 0.31,
        "psi_status": "alert",
        "auc": 0.67,
        "auc_status": "alert",
    }
    assert data["thresholds"] == {
        "psi_warn": 0.15,
        "psi_alert": 0.25,
        "adversarial_warn": 0.6,
        "adversarial_alert": 0.65,
    }
    assert len(data["histogram"]["edges"]) == 21
    assert len(data["histogram"]["current"]) == len(data["histogram"]["baseline"]) == 20
    assert data["latest"] == {"run": latest.id, "date": latest.date.isoformat()}
    assert data["baseline"] == "the package's reference scores (5,000 scores)"
    for canvas in ("psi-chart", "auc-chart", "distribution-chart"):
        assert f'<canvas id="{canvas}"' in page
    assert "vendor/chartjs/chart.umd.min.js" in page
    assert "js/model_charts.js" in page
    assert "js/model.js" in page  # the run polling stays

    features = re.findall(
        r'<td class="mono">(\w+)</td><td class="num mono metric (\w+)">([\d.]+)', page
    )
    assert [f[0] for f in features][:3] == ["age", "tenure_months", "monthly_spend"]
    assert features[0] == ("age", "alert", "0.496")
    psis = [float(f[2]) for f in features]
    assert psis == sorted(psis, reverse=True)


def test_a_run_checked_without_features_has_no_auc_point_rather_than_zero(client, owner):
    """A first run compared with reference scores has PSI but no adversarial AUC."""
    (model,) = make_models(owner, 1)
    make_runs([model], 2)
    first = model.runs.order_by("date").first()
    first.quality = {**quality(0.02, 0.5), "adversarial_auc": None, "adversarial_status": None}
    first.save()

    data = chart_data(logged_in(client, owner).get(f"/models/{model.id}/").content.decode())

    point = next(p for p in data["runs"] if p["run"] == first.id)
    assert (point["psi"], point["auc"], point["auc_status"]) == (0.02, None, None)


def test_the_run_history_shows_each_runs_light_psi_auc_and_report(client, owner):
    (model,) = make_models(owner, 1)
    make_runs([model], 3)
    latest, previous = model.runs.order_by("-date")[:2]
    report = Report.objects.create(batch=Batch.objects.create(), owner=owner, status="ok")
    report.runs.add(latest)

    page = logged_in(client, owner).get(f"/models/{model.id}/").content.decode()
    rows = dict(re.findall(r'<tr data-run="(\d+)" id="run-\d+">(.*?)</tr>', page, re.S))

    row = rows[str(latest.id)]
    assert f'class="light {latest.quality_status}"' in row
    assert f"{latest.quality['psi']:.3f}" in row
    assert f"{latest.quality['adversarial_auc']:.3f}" in row
    assert f'href="/reports/{report.id}/">Report</a>' in row
    assert "Report</a>" not in rows[str(previous.id)]


def test_a_model_without_checked_runs_draws_no_charts(client, owner):
    (model,) = make_models(owner, 1)

    page = logged_in(client, owner).get(f"/models/{model.id}/").content.decode()

    assert chart_data(page)["runs"] == []
    assert "<canvas" not in page
    assert "chart.umd.min.js" not in page


def test_another_users_model_page_is_a_404(client, owner, outsider):
    (model,) = make_models(owner, 1)
    make_runs([model], 2)

    assert logged_in(client, outsider).get(f"/models/{model.id}/").status_code == 404


# --- the status page ------------------------------------------------------------


@pytest.fixture
def two_users_runs(owner, outsider):
    """Alice's and Mallory's models, each with a recent failure and a quality verdict."""
    alice = make_models(owner, 2, prefix="alice")
    mallory = make_models(outsider, 1, prefix="mallory")
    make_runs(alice + mallory, 3)
    for deployment in (alice[0], mallory[0]):
        ScoringRun.objects.filter(id=deployment.runs.first().id).update(
            status=ScoringRun.Status.FAILED,
            error=f"{deployment.name} broke",
            finished_at=timezone.now(),
            quality=None,
            quality_status="",
        )
    return alice, mallory


@pytest.fixture
def fake_remote_checks(monkeypatch):
    """Redis, S3 and the workers answer at once, and the ping is counted."""
    calls = []
    monkeypatch.setitem(status_views.REMOTE_CHECKS, "broker", lambda: "redis 7")
    monkeypatch.setitem(status_views.REMOTE_CHECKS, "storage", lambda: "http://s3")
    monkeypatch.setitem(
        status_views.REMOTE_CHECKS, "workers", lambda: calls.append(1) or "1 live: w@host"
    )
    monkeypatch.setattr(health, "last_tick", lambda: timezone.now() - timedelta(seconds=30))
    monkeypatch.setattr(health, "sandbox_protections", lambda: {})  # a broadcast's timeout
    return calls


def test_the_status_json_has_every_field(client, owner, two_users_runs, fake_remote_checks):
    alice, _ = two_users_runs
    (queued, running, retrying), old = alice[1].runs.all(), alice[0].runs.last()
    unchecked = {"quality": None, "quality_status": ""}
    for run, status in ((queued, "queued"), (running, "running")):
        ScoringRun.objects.filter(id=run.id).update(status=status, finished_at=None, **unchecked)
    ScoringRun.objects.filter(id=retrying.id).update(
        status="retrying", finished_at=timezone.now(), error="flaky", **unchecked
    )
    ScoringRun.objects.filter(id=old.id).update(
        status="failed", finished_at=timezone.now() - timedelta(days=2)
    )

    body = logged_in(client, owner).get("/status.json").json()

    assert set(body) == {
        "ok", "checked_at", "scope", "services", "last_tick", "runs", "waiting", "failures",
        "quality", "pages", "online",
    }  # fmt: skip
    assert body["ok"] is True
    assert body["scope"] == "own"
    assert set(body["services"]) == {"database", "broker", "storage", "workers"}
    assert body["services"]["database"]["ok"] and body["services"]["workers"]["ok"]
    assert body["services"]["workers"]["detail"] == "1 live: w@host"
    assert {"ok", "detail", "ms", "name"} <= set(body["services"]["broker"])
    assert body["last_tick"]["ok"] is True
    assert 29 <= body["last_tick"]["age_seconds"] <= 40
    assert body["runs"] == {
        "waiting": 0, "queued": 1, "running": 1, "retrying": 1, "failed_24h": 2
    }  # fmt: skip
    assert body["waiting"] == []
    assert [f["status"] for f in body["failures"]] == ["retrying", "failed"]
    failure = body["failures"][1]
    assert set(failure) == {
        "run", "model", "model_id", "owner", "date", "finished_at", "status", "attempts",
        "max_attempts", "next_attempt_at", "error", "url",
    }  # fmt: skip
    assert failure["error"] == "alice-000 broke"
    assert failure["url"] == f"/models/{alice[0].id}/#run-{failure['run']}"
    assert body["quality"]["counts"]["none"] == 1  # alice-001 has no checked run left
    assert sum(body["quality"]["counts"].values()) == 2
    assert body["quality"]["models"][-1]["name"] == "alice-001"  # worst first, unchecked last
    model = body["quality"]["models"][0]
    assert set(model) == {"id", "name", "owner", "status", "run", "date", "psi", "auc", "url"}
    assert fake_remote_checks == [1]  # the workers were pinged once for the request


def test_staff_see_every_users_models_and_runs_on_the_status_page(
    client, staff, two_users_runs, fake_remote_checks
):
    body = logged_in(client, staff).get("/status.json").json()
    page = client.get("/status/").content.decode()

    assert body["scope"] == "all"
    assert {f["model"] for f in body["failures"]} == {"alice-000", "mallory-000"}
    assert {m["name"] for m in body["quality"]["models"]} == {
        "alice-000", "alice-001", "mallory-000"
    }  # fmt: skip
    assert body["runs"]["failed_24h"] == 2
    assert "Every user's models and runs" in page
    assert "alice-000 broke" in page and "mallory-000 broke" in page
    assert "<th>Owner</th>" in page
    assert fake_remote_checks == [1, 1]


@pytest.mark.parametrize("user", ["owner", "outsider"])
def test_others_see_only_their_own_on_the_status_page(
    client, request, user, two_users_runs, fake_remote_checks
):
    me = request.getfixturevalue(user)
    mine = {"owner": "alice", "outsider": "mallory"}[user]
    theirs = {"owner": "mallory", "outsider": "alice"}[user]

    body = logged_in(client, me).get("/status.json").json()
    page = client.get("/status/").content.decode()

    assert body["scope"] == "own"
    assert {f["model"] for f in body["failures"]} == {f"{mine}-000"}
    assert all(m["name"].startswith(mine) for m in body["quality"]["models"])
    assert body["runs"]["failed_24h"] == 1
    assert theirs not in page
    assert f"{mine}-000 broke" in page
    assert "<th>Owner</th>" not in page


def test_the_status_page_says_what_is_down_and_a_stale_tick(
    client, owner, monkeypatch, fake_remote_checks
):
    def down():
        raise ConnectionError("no route to host")

    monkeypatch.setitem(status_views.REMOTE_CHECKS, "storage", down)
    tick = timezone.now() - timedelta(minutes=12, seconds=30)
    monkeypatch.setattr(health, "last_tick", lambda: tick)

    body = logged_in(client, owner).get("/status.json").json()
    page = client.get("/status/").content.decode()

    assert body["ok"] is False
    assert body["services"]["storage"] == {
        "ok": False,
        "detail": "ConnectionError: no route to host",
        "ms": body["services"]["storage"]["ms"],
        "name": "S3 storage",
    }
    assert body["last_tick"]["ok"] is False
    assert body["last_tick"]["detail"] == "stale: is celery beat running?"
    assert '<div class="tile bad" data-service="storage">' in page
    assert "12\xa0minutes ago" in page
    assert "No failures in the last 24 hours." in page


def test_the_status_page_reports_every_service_up_with_a_real_worker(client, owner, worker):
    body = logged_in(client, owner).get("/status.json").json()

    for name, check in body["services"].items():
        assert check["ok"], (name, check)
    assert re.match(r"\d+ live: ", body["services"]["workers"]["detail"])


@pytest.mark.parametrize("path", ["/status/", "/status.json"])
def test_the_status_page_needs_a_login(client, path):
    response = client.get(path)

    assert response.status_code == 302
    assert response.url == f"/login/?next={path}"


def test_the_nav_links_to_the_status_page(client, owner):
    page = logged_in(client, owner).get("/").content.decode()

    assert '<a href="/status/" class="">Status</a>' in page


# --- 1,000 models of one user ---------------------------------------------------

# The most SQL queries each page of a long list may make, however many models it pages.
LIST_QUERY_BOUNDS = {
    "/": QUERY_BOUNDS["/"],
    "/?status=alert": QUERY_BOUNDS["/"],
    "/?q=telecom": QUERY_BOUNDS["/"],
    "/?page=20": QUERY_BOUNDS["/"],
    "/?sort=status&page=7": QUERY_BOUNDS["/"],
    "/?sort=last_run&status=ok&page=3": QUERY_BOUNDS["/"],
    "/models/status/?page=20": QUERY_BOUNDS["/models/status/"],
    "/status/": QUERY_BOUNDS["/status/"],
    "/status/?status=alert&q=model": QUERY_BOUNDS["/status/"],
    "/status.json?page=20&failures_page=2": QUERY_BOUNDS["/status.json"],
}
ROW = re.compile(r'<tr data-model="([^"]+)">')
NEXT = re.compile(r'<a class="btn small" href="([^"#]+)#models" rel="next">')


@pytest.fixture
def thousand(owner, outsider):
    """Alice's 1,000 models: 3 alert, 12 warning, 60 failed, the rest ok, one of them
    renamed to be searched for; and Mallory's 20 models, 5 alerting, Alice must never see."""
    by_level = make_fleet(owner, 1000, alert=3, warning=12, failed=60)
    telecom = by_level["ok"][400]
    telecom.name = "Churn-Telecom-EU"
    telecom.save(update_fields=["name"])
    make_fleet(outsider, 20, alert=5, warning=0, failed=5, prefix="mallory")
    analyze()
    return by_level


def analyze() -> None:
    """Gives the planner the statistics a live database keeps (autovacuum analyzes a table
    after a bulk insert): without them it takes 1,000 models for 10 and plans nested loops."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE scoring_deployment, scoring_scoringrun, scoring_packageversion")


def names(page: str) -> list[str]:
    return ROW.findall(page)


def status_counts(page: str) -> dict[str, str]:
    """The status filter's options and their counts, as the page writes them."""
    return dict(re.findall(r'data-status="(\w+)".*?<span class="count">([\d,]+)</span>', page))


def walk(client, url: str) -> list[str]:
    """Every row of a list, following its "Next" links from `url` to the last page."""
    seen = []
    while url:
        page = client.get(url).content.decode()
        seen += names(page)
        found = NEXT.search(page)
        url = "/" + found.group(1).replace("&amp;", "&") if found else None
    return seen


@pytest.mark.parametrize("url", LIST_QUERY_BOUNDS)
def test_each_page_of_a_thousand_models_asks_a_bounded_number_of_queries(
    url, client, owner, thousand, fake_remote_checks, capsys, django_assert_max_num_queries
):
    logged_in(client, owner).get(url)  # templates load once, not in the count

    with django_assert_max_num_queries(LIST_QUERY_BOUNDS[url]) as queries:
        response, seconds = timed_get(client, url)

    assert response.status_code == 200
    if url.startswith("/status.json"):
        rows = len(response.json()["quality"]["models"])
    else:
        rows = response.content.decode().count("data-model=")
    assert 0 < rows <= listing.PER_PAGE
    with capsys.disabled():
        print(f"\n{url:<38} {len(queries)} queries with 1,000 models, {1000 * seconds:.0f} ms")


def test_my_models_shows_50_a_page_and_the_count_of_each_status(client, owner, thousand):
    page = logged_in(client, owner).get("/").content.decode()

    assert len(names(page)) == 50
    assert list(status_counts(page).items()) == [
        ("all", "1,000"), ("alert", "3"), ("warning", "12"), ("failed", "60"), ("ok", "925"),
        ("none", "0"),
    ]  # fmt: skip
    assert "1–50 of 1,000" in page


def test_the_alert_filter_shows_exactly_the_alerting_models(client, owner, thousand):
    page = logged_in(client, owner).get("/?status=alert").content.decode()

    assert sorted(names(page)) == sorted(m.name for m in thousand["alert"])
    assert page.count('class="light alert"') == 3 + 1  # the three rows and the filter's option
    assert 'class="filter-option current" data-status="alert"' in page
    assert "mallory" not in page


def test_the_failed_filter_pages_through_the_failed_models(client, owner, thousand):
    logged_in(client, owner)

    seen = walk(client, "/?status=failed")

    assert sorted(seen) == sorted(m.name for m in thousand["failed"])
    assert len(seen) == len(set(seen)) == 60


def test_search_finds_a_model_by_part_of_its_name_whatever_the_case(client, owner, thousand):
    page = logged_in(client, owner).get("/?q=teLEcom").content.decode()

    assert names(page) == ["Churn-Telecom-EU"]
    assert status_counts(page)["all"] == "1"
    assert "No models match" in client.get("/?q=mallory").content.decode()


def test_search_and_filter_combine_and_their_links_keep_each_other(client, owner, thousand):
    page = logged_in(client, owner).get("/?q=model-&status=ok&sort=status").content.decode()

    assert 'href="?q=model-&amp;sort=status&amp;status=alert#models"' in page
    assert 'href="?q=model-&amp;status=ok&amp;sort=status&amp;page=2#models" rel="next"' in page
    assert "Churn-Telecom-EU" not in walk(client, "/?q=model-&status=ok")


@pytest.mark.parametrize("sort", ["", "status", "last_run", "next_run"])
def test_the_pages_walk_every_model_once_in_any_order(client, owner, thousand, sort):
    seen = walk(logged_in(client, owner), f"/?sort={sort}")

    assert len(seen) == 1000
    assert set(seen) == set(Deployment.objects.filter(owner=owner).values_list("name", flat=True))


def test_sorted_by_status_the_worst_come_first(client, owner, thousand):
    page = logged_in(client, owner).get("/?sort=status").content.decode()

    def by_name(models):
        return sorted((m.name for m in models), key=str.lower)

    expected = by_name(thousand["failed"])[:50]
    assert names(page) == expected
    last_failed = client.get("/?sort=status&page=2").content.decode()
    assert names(last_failed)[:25] == [
        *by_name(thousand["failed"])[50:],
        *by_name(thousand["alert"]),
        *by_name(thousand["warning"]),
    ]


def test_sorted_by_name_last_run_or_next_run(client, owner, thousand):
    ok = thousand["ok"]
    now = timezone.now()
    # The latest run of ok[7] finished last; ok[8] has no finished run; ok[9] runs next.
    ScoringRun.objects.filter(deployment=ok[7], date=timezone.localdate()).update(finished_at=now)
    ScoringRun.objects.filter(deployment=ok[8]).delete()
    Deployment.objects.filter(id=ok[9].id).update(next_run_at=now + timedelta(minutes=5))
    Deployment.objects.filter(id=ok[10].id).update(next_run_at=None)
    logged_in(client, owner)

    by_name = names(client.get("/").content.decode())
    assert by_name[:3] == ["Churn-Telecom-EU", "model-000", "model-001"]
    assert names(client.get("/?sort=last_run").content.decode())[0] == ok[7].name
    assert names(client.get("/?sort=last_run&page=20").content.decode())[-1] == ok[8].name
    assert names(client.get("/?sort=next_run").content.decode())[0] == ok[9].name
    assert names(client.get("/?sort=next_run&page=20").content.decode())[-1] == ok[10].name


def test_the_poll_of_a_page_carries_only_that_pages_rows(client, owner, thousand):
    logged_in(client, owner)
    page = names(client.get("/?sort=status&page=2").content.decode())

    body = client.get("/models/status/?sort=status&page=2").json()

    assert names(body["rows"]) == page
    assert body["counts"] == {
        "all": 1000, "alert": 3, "warning": 12, "failed": 60, "ok": 925, "none": 0
    }  # fmt: skip


def test_a_page_past_the_last_shows_the_last(client, owner, thousand):
    page = logged_in(client, owner).get("/?status=alert&page=9").content.decode()

    assert sorted(names(page)) == sorted(m.name for m in thousand["alert"])


@pytest.mark.parametrize(
    "query, message",
    [
        ("status=purple", "status: Select a valid choice. purple is not one of the available"),
        ("page=0", "page: Ensure this value is greater than or equal to 1."),
        ("page=two", "page: Enter a whole number."),
        ("sort=size", "sort: Select a valid choice."),
        ("q=" + "x" * 101, "q: Ensure this value has at most 100 characters (it has 101)."),
    ],
)
def test_a_bad_query_string_says_what_is_wrong(client, owner, query, message):
    make_models(owner, 2)
    logged_in(client, owner)

    poll = client.get(f"/models/status/?{query}")
    page = client.get(f"/?{query}", follow=True)

    assert poll.status_code == 400
    assert message in poll.json()["error"]
    assert page.redirect_chain == [("/", 302)]
    assert message in page.content.decode()
    assert len(names(page.content.decode())) == 2


def test_the_status_page_pages_its_quality_table_worst_first(
    client, owner, thousand, fake_remote_checks
):
    # The failed models' earlier runs lose their checks: the table's lights are as chosen.
    ScoringRun.objects.filter(deployment__in=thousand["failed"]).update(
        quality=None, quality_status=""
    )
    body = logged_in(client, owner).get("/status.json").json()

    assert body["quality"]["counts"] == {"alert": 3, "warning": 12, "ok": 925, "none": 60}
    assert body["pages"]["quality"] == {"number": 1, "pages": 20, "count": 1000}
    assert [m["status"] for m in body["quality"]["models"][:15]] == ["alert"] * 3 + ["warning"] * 12
    assert len(body["quality"]["models"]) == 50
    alerts = client.get("/status.json?status=alert").json()["quality"]["models"]
    assert sorted(m["name"] for m in alerts) == sorted(m.name for m in thousand["alert"])
    seen = []
    for number in range(1, 21):
        seen += [m["id"] for m in client.get(f"/status.json?page={number}").json()["quality"]["models"]]  # fmt: skip
    assert len(seen) == len(set(seen)) == 1000
    assert set(seen) == set(Deployment.objects.filter(owner=owner).values_list("id", flat=True))


def test_the_status_page_pages_its_failures(client, owner, thousand, fake_remote_checks):
    logged_in(client, owner)
    first = client.get("/status.json").json()
    second = client.get("/status.json?failures_page=2").json()
    page = client.get("/status/?failures_page=2").content.decode()

    assert first["runs"]["failed_24h"] == 60
    assert first["pages"]["failures"] == {"number": 1, "pages": 2, "count": 60}
    assert len(first["failures"]) == 50 and len(second["failures"]) == 10
    failed = {f["model"] for f in first["failures"] + second["failures"]}
    assert failed == {m.name for m in thousand["failed"]}
    assert "51–60 of 60" in page
    assert 'href="?failures_page=1#failures" rel="prev"' in page
    assert "mallory" not in page


def test_the_status_page_searches_both_its_tables(client, owner, thousand, fake_remote_checks):
    name = thousand["failed"][0].name
    body = logged_in(client, owner).get(f"/status.json?q={name}").json()

    assert [f["model"] for f in body["failures"]] == [name]
    assert [m["name"] for m in body["quality"]["models"]] == [name]
    assert client.get("/status.json?status=failed").status_code == 400  # not a light


def test_my_models_shows_the_champions_file_beside_its_challenger_and_a_newer_upload(client, owner):
    """The live version is the model's: a challenger or a newer upload being validated is
    said beside it, not shown as if it were the model."""
    (churn,) = make_models(owner, 1, prefix="churn")
    v1 = churn.champion
    newer = {}
    for number, state, dropped_as in ((2, "valid", "challenger"), (3, "pending", "champion")):
        version = PackageVersion.objects.get(id=v1.id)
        version.pk, version.number, version.state = None, number, state
        version.file, version.filename = f"alice/churn-000/v{number}.dill", f"churn-v{number}.dill"
        version.size, version.dropped_as = 90_000, dropped_as
        version.save()
        newer[number] = version
    roles.take_role(newer[2], churn)

    page = logged_in(client, owner).get("/").content.decode()
    [row] = re.findall(r'<tr data-model="churn-000">(.*?)</tr>', page, re.S)

    assert "v1 · churn-000.dill · 19.5\xa0KB · 3 versions · challenger v2</div>" in row
    assert "v3 uploaded: pending</div>" in row
    assert "churn-v2.dill" not in row and "churn-v3.dill" not in row
