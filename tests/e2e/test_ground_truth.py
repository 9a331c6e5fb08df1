"""The model page's "Gini by scoring date, matured" chart in a real browser."""

import numpy as np
import pytest

from scoring.models import ScoringRun
from scoring.quality import ground_truth, levels, performance
from tests.factories.browser import DRAWN_PIXELS, log_in
from tests.factories.runs import make_models, make_runs

pytestmark = pytest.mark.django_db(transaction=True)
PACKAGE_PARAMS = {"target": "churned", "label_lag_days": 30}


def matured(run: ScoringRun, package: dict, drop: float) -> None:
    """The performance the ground-truth pass stores, measured on simulated outcomes whose
    ranking is `drop` worse than the model's training."""
    rng = np.random.default_rng(run.id)
    outcomes = rng.integers(0, 2, 1500)
    scores = 1 / (1 + np.exp(-rng.normal(outcomes * (1.2 - drop), 1)))
    found = performance.classification(outcomes=outcomes, scores=scores, seed=run.id)
    lines = ground_truth.gini_lines(package)
    status = levels.below(found["gini_interval"][1], lines["gini_warn"], lines["gini_alert"])
    joined = len(outcomes)
    run.performance = {
        "target": "churned",
        "model_kind": "classifier",
        "scored": joined,
        "joined": joined,
        "unlabelled_share": 0.0,
        "complete": True,
        **found,
        **lines,
        "status": status,
    }
    run.performance_status = status
    run.save(update_fields=["performance", "performance_status"])


def test_the_model_page_draws_the_gini_of_its_matured_runs(
    page,
    live_server,
    owner,
    artifacts,
    errors,  # noqa: F811
):
    [model] = make_models(owner, 1, prefix="churn")
    version = model.versions.get()
    version.package = {**version.package, "params": PACKAGE_PARAMS, "meta": {"gini_oot": 0.58}}
    version.save()
    make_runs([model], 40)
    runs = list(model.runs.filter(status="succeeded").order_by("date"))[:25]
    for index, run in enumerate(runs):
        matured(run, version.package, drop=0.0 if index < 18 else 0.8)

    log_in(page, live_server)
    page.goto(f"{live_server.url}/models/{model.id}/")
    page.wait_for_selector("#gini-chart")
    page.wait_for_function("window.giniChart !== undefined")

    assert "Gini by scoring date, matured" in page.inner_text("#ground-truth")
    assert page.evaluate(DRAWN_PIXELS, "gini-chart") > 2000, "the Gini chart looks blank"
    datasets = page.evaluate(
        "Chart.getChart('gini-chart').data.datasets.map((d) => [d.label, d.data.length])"
    )
    assert datasets == [
        ["Gini", 25],
        ["interval low", 25],
        ["interval high", 25],
        ["expected (gini_oot)", 25],
    ]
    latest = runs[-1]
    latest.refresh_from_db()
    assert latest.performance_status == "alert"
    shown = page.inner_text("#ground-truth-latest")
    assert f"{latest.performance['gini']:.3f}" in shown
    assert page.locator("#calibration tbody tr").count() == 10
    # Beside the other checks of each run in the runs table.
    assert page.inner_text(f'[data-gini="{latest.id}"]') == (
        f"Gini {latest.performance['gini']:.3f} alert"
    )
    page.locator("#ground-truth").screenshot(path=f"{artifacts}/model-gini-chart.png")
    assert errors == []
