"""The dashboard, a model's quality charts and the status page in a real browser."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from scoring.models import PackageVersion, ScoringRun
from tests.factories.browser import DRAWN_PIXELS, log_in
from tests.factories.runs import make_fleet, make_models, make_runs, quality

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fleet(owner):
    """Alice's twelve models with a month of daily runs, one running now, one failing."""
    models = make_models(owner, 12, prefix="churn")
    make_runs(models, 30)
    ScoringRun.objects.create(
        deployment=models[1],
        version=models[1].versions.get(),
        date=timezone.localdate() + timedelta(days=1),
        status=ScoringRun.Status.RUNNING,
        started_at=timezone.now(),
    )
    ScoringRun.objects.filter(id=models[2].runs.first().id).update(
        status=ScoringRun.Status.FAILED,
        error="feature source: missing columns complaints, plan",
        rows=None,
        quality=None,
        quality_status="",
        finished_at=timezone.now() - timedelta(minutes=20),
    )
    latest = models[0].runs.first()
    latest.quality = quality(0.31, 0.67, rows=101_250)
    latest.quality_status = "alert"
    latest.rows = 101_250
    latest.save()
    return models


def test_the_dashboard_shows_last_runs_and_quality_lights(
    page, live_server, owner, fleet, artifacts, errors
):
    log_in(page, live_server)

    rows = page.locator("#model-rows tr")
    assert rows.count() == 12
    first = page.inner_text('tr[data-model="churn-000"]')
    assert "succeeded" in first and "101,250 rows" in first and "alert" in first
    assert "PSI 0.310 · AUC 0.67" in first
    assert "running now" in page.inner_text('tr[data-model="churn-001"]')
    assert "failed" in page.inner_text('tr[data-model="churn-002"]')
    title = page.get_attribute('tr[data-model="churn-000"] .light', "title")
    assert title == "Alert · PSI 0.310 · adversarial AUC 0.670"
    page.screenshot(path=f"{artifacts}/dashboard.png", full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=f"{artifacts}/dashboard-phone.png", full_page=True)
    assert errors == []


def test_the_model_page_draws_its_quality_charts(
    page, live_server, owner, fleet, artifacts, errors
):
    log_in(page, live_server)
    page.click('tr[data-model="churn-000"] a.name')
    page.wait_for_selector("#psi-chart")
    page.wait_for_function("window.modelCharts && window.modelCharts.distribution")

    for canvas in ("psi-chart", "auc-chart", "distribution-chart"):
        assert page.evaluate(f"!!Chart.getChart('{canvas}')"), canvas
        assert page.evaluate(DRAWN_PIXELS, canvas) > 2000, f"{canvas} looks blank"
    datasets = page.evaluate(
        "Chart.getChart('psi-chart').data.datasets.map((d) => [d.label, d.data.length])"
    )
    checked = fleet[0].runs.exclude(quality_status="").count()
    assert datasets == [["PSI", checked], ["warning 0.1", checked], ["alert 0.25", checked]]
    bars = page.evaluate(
        "Chart.getChart('distribution-chart').data.datasets.map((d) => d.data.length)"
    )
    assert bars == [20, 20]
    features = page.inner_text("#top-features")
    assert features.index("age") < features.index("tenure_months") < features.index("plan")
    assert re.search(r"age\s+0\.496\s+alert", features)
    page.screenshot(path=f"{artifacts}/model-charts.png", full_page=True)
    page.locator("#quality").screenshot(path=f"{artifacts}/model-charts-card.png")
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)  # Chart.js redraws on resize
    page.locator("#quality").screenshot(path=f"{artifacts}/model-charts-phone.png")
    page.locator("#runs").screenshot(path=f"{artifacts}/model-runs-phone.png")
    assert errors == []


def test_the_status_page_refreshes_its_figures_without_reloading(
    page, live_server, owner, fleet, worker, artifacts, errors
):
    log_in(page, live_server)
    page.click("nav >> text=Status")
    page.wait_for_selector("#status")
    failed = ScoringRun.objects.filter(
        status=ScoringRun.Status.FAILED, finished_at__gte=timezone.now() - timedelta(hours=24)
    ).count()
    assert page.inner_text('[data-count="failed_24h"]') == str(failed)
    assert "churn-002" in page.inner_text("#failures")
    assert page.inner_text('[data-service="workers"] .light') == "up"
    page.evaluate("window.notReloaded = true")

    ScoringRun.objects.filter(id=fleet[3].runs.first().id).update(
        status=ScoringRun.Status.FAILED, error="sandbox: out of memory", finished_at=timezone.now()
    )
    page.wait_for_function(
        f"document.querySelector('[data-count=\"failed_24h\"]').textContent === '{failed + 1}'",
        timeout=30_000,
    )
    assert "sandbox: out of memory" in page.inner_text("#failures")
    assert page.evaluate("window.notReloaded") is True
    page.screenshot(path=f"{artifacts}/status.png", full_page=True)
    assert errors == []


def test_the_model_page_still_reloads_when_a_running_run_ends(
    page, live_server, owner, fleet, errors
):
    log_in(page, live_server)
    page.click('tr[data-model="churn-001"] a.name')
    page.wait_for_function("window.modelCharts && window.modelCharts.psi")
    running = fleet[1].runs.get(status=ScoringRun.Status.RUNNING)
    assert page.inner_text(f'[data-run-status="{running.id}"]') == "running"

    ScoringRun.objects.filter(id=running.id).update(
        status=ScoringRun.Status.SUCCEEDED,
        rows=99_999,
        finished_at=timezone.now(),
        quality=quality(0.05, 0.52, rows=99_999),
        quality_status="ok",
    )

    page.wait_for_selector(f'[data-run-status="{running.id}"].succeeded', timeout=15_000)
    page.wait_for_function("window.modelCharts && window.modelCharts.psi")
    assert page.evaluate("Chart.getChart('psi-chart').data.datasets[0].data.at(-1)") == 0.05
    assert errors == []


def test_a_user_filters_a_thousand_models_to_the_three_that_alert(
    page, live_server, owner, artifacts, errors
):
    alerting = make_fleet(owner, 1000)["alert"]
    # One of them is validating a new version, so the page polls every 1.5 s.
    validating = alerting[0].versions.get()
    PackageVersion.objects.filter(id=validating.id).update(state=PackageVersion.State.PENDING)
    log_in(page, live_server)
    assert page.locator("#model-rows tr").count() == 50
    assert page.inner_text('#models [data-status="alert"] .count') == "3"

    page.click('#models [data-status="alert"]')
    page.wait_for_url("**status=alert**")

    shown = page.locator("#model-rows tr").evaluate_all("rows => rows.map((r) => r.dataset.model)")
    assert sorted(shown) == sorted(m.name for m in alerting)
    # The poll asks for this page's rows only, and they stay the three.
    with page.expect_request(lambda request: "/models/status/" in request.url) as poll:
        PackageVersion.objects.filter(id=validating.id).update(state=PackageVersion.State.VALID)
    assert "status=alert" in poll.value.url
    page.wait_for_selector(f'tr[data-model="{alerting[0].name}"] .badge.valid')
    assert page.locator("#model-rows tr").count() == 3
    page.screenshot(path=f"{artifacts}/dashboard-alert-filter.png", full_page=True)
    assert errors == []
