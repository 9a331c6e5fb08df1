"""A LightGBM package dropped in a real browser: its page draws the model's feature importance
and says what libraries it uses beside the portal's."""

import pytest

from tests.factories import packages
from tests.factories.browser import DRAWN_PIXELS, drop_file, log_in

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_model_page_draws_the_importance_validation_measured(
    page, live_server, worker, bucket, owner, artifacts
):
    found_errors = []
    page.on("pageerror", lambda error: found_errors.append(str(error)))
    log_in(page, live_server, "alice", "alice-password-123")

    drop_file(page, packages.dumps(packages.spend_decides("lightgbm")), "spend.dill")

    page.wait_for_selector('tr[data-model="spend"] .badge.valid', timeout=60_000)
    page.click('tr[data-model="spend"] a.name')
    page.wait_for_function("typeof Chart !== 'undefined' && !!Chart.getChart('importance-chart')")
    labels = page.evaluate("Chart.getChart('importance-chart').data.labels")
    shares = page.evaluate("Chart.getChart('importance-chart').data.datasets[0].data")
    assert labels[0] == "monthly_spend" and len(labels) == 7
    assert shares[0] > 90 and shares == sorted(shares, reverse=True)
    assert page.evaluate(DRAWN_PIXELS, "importance-chart") > 1000, "the chart looks blank"
    # Every feature is named on the axis, however little it matters.
    assert page.evaluate("Chart.getChart('importance-chart').scales.y.ticks.length") == 7
    assert "by total gain" in page.inner_text("#importance")
    assert "uses " in page.inner_text("#environment") and "lightgbm" in page.inner_text(
        "#environment"
    )
    page.locator("#importance").screenshot(path=f"{artifacts}/model-importance.png")
    assert found_errors == []
