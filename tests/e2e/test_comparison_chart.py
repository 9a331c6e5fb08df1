"""The model page's "Challenger vs champion" chart in a real browser: its axes say what they
measure, and its days lie as far apart as their dates."""

from datetime import date, timedelta

import pytest

from scoring.models import Comparison, Deployment, ScoringRun
from tests.factories.browser import DRAWN_PIXELS, log_in
from tests.factories.reports import deployment, valid_version

pytestmark = pytest.mark.django_db(transaction=True)
FIRST = date(2026, 10, 1)
DAYS = [0, 1, 2, 9, 30]  # scored on the first three days, a week later, then three weeks later


def compared(model: Deployment, day: date, index: int) -> None:
    """Both versions' runs of `day` and their comparison, as the scoring leaves them."""
    runs = [
        ScoringRun.objects.create(
            deployment=model, version=version, role=role, date=day, status="succeeded"
        )
        for version, role in ((model.champion, "champion"), (model.challenger, "challenger"))
    ]
    Comparison.objects.create(
        deployment=model,
        date=day,
        champion_run=runs[0],
        challenger_run=runs[1],
        metrics={"spearman": 0.9 - index / 50, "top_decile_overlap": 0.8, "psi": 0.02 * index},
    )


def test_the_comparison_chart_labels_its_axes_and_spaces_its_days_by_date(
    page, live_server, owner, artifacts, errors
):
    model = deployment(owner, "churn")
    model.challenger = valid_version(model, 2)
    model.save()
    for index, offset in enumerate(DAYS):
        compared(model, FIRST + timedelta(days=offset), index)

    log_in(page, live_server)
    page.goto(f"{live_server.url}/models/{model.id}/")
    page.wait_for_function("window.comparisonChart !== undefined")

    assert page.evaluate(DRAWN_PIXELS, "comparison-chart") > 2000, "the chart looks blank"
    titles = page.evaluate(
        """() => Object.fromEntries(Object.entries(comparisonChart.scales).map(
            ([id, scale]) => [id, scale.options.title.display ? scale.options.title.text : null]))"""
    )
    assert titles == {
        "x": "scoring date",
        "share": "rank agreement (1 = same)",
        "psi": "PSI (0 = same)",
    }
    # Where each day's point is drawn: a day three weeks after the one before lies three
    # times as far from it as a day one week after.
    xs = page.evaluate("comparisonChart.getDatasetMeta(0).data.map((point) => point.x)")
    gaps = [right - left for left, right in zip(xs, xs[1:], strict=False)]
    per_day = gaps[0]
    expected = [(b - a) * per_day for a, b in zip(DAYS, DAYS[1:], strict=False)]
    assert gaps == pytest.approx(expected, rel=0.01)
    ticks = page.evaluate("comparisonChart.scales.x.ticks.map((tick) => tick.label)")
    assert ticks[0] == "2026-10-01" and all(len(label) == 10 for label in ticks), ticks
    page.locator("#roles figure").screenshot(path=f"{artifacts}/model-comparison-chart.png")
    assert errors == []
