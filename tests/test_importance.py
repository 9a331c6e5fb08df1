"""Feature importance: measured at validation, kept on the version, returned by the API,
drawn on the model page, and weighting the drift the quality checks and reports rank."""

import io

import numpy as np
import pandas as pd
import pytest

from scoring.models import PackageVersion
from scoring.packages import contract, deployments
from scoring.quality import metrics
from scoring.reports.content import drifting_features
from scoring.sandbox import importance
from tests.factories import features, packages

THRESHOLDS = {
    "psi_warn": 0.1,
    "psi_alert": 0.25,
    "adversarial_warn": 0.6,
    "adversarial_alert": 0.65,
}


def measured(package: dict) -> dict:
    """As the sandbox measures it, on smoke-test rows of another slice."""
    model, names = package["model"], package["features"]
    method = contract.resolve_method(model, None)
    rows = features.feature_frame(200, seed=3)[names]
    return importance.measure(
        model, names, rows, lambda frame: contract.score(model, method, frame)
    )


@pytest.mark.parametrize(
    "kind, method",
    [
        ("catboost", "catboost"),
        ("lightgbm", "gain"),
        ("xgboost", "gain"),
        ("random_forest", "feature_importances_"),
        ("logistic", "coef_"),
        ("function", "permutation"),
    ],
)
def test_the_feature_that_decides_the_target_holds_the_importance(kind, method):
    found = measured(packages.spend_decides(kind))

    assert found["method"] == method
    shares = {item["name"]: item["share"] for item in found["features"]}
    assert found["features"][0]["name"] == "monthly_spend"
    assert shares["monthly_spend"] > 0.9, shares
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-5)  # rounded to 6 places


def test_permutation_gives_a_function_of_one_column_all_of_the_importance():
    assert measured(packages.function_package())["features"] == [
        {"name": "monthly_spend", "share": 1.0}
    ]


def test_a_pipeline_that_encodes_its_inputs_is_measured_by_permutation():
    found = measured(packages.sklearn_package())

    assert found["method"] == "permutation"
    assert {item["name"] for item in found["features"]} == set(features.FEATURES)


# --- drift weighted by importance ---------------------------------------------


def drifted_pair(rows: int = 4000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """age moves a lot (PSI about 1), monthly_spend moderately (about 0.2)."""
    rng = np.random.default_rng(5)
    baseline = pd.DataFrame(
        {"age": rng.normal(40, 10, rows), "monthly_spend": rng.gamma(2.0, 30.0, rows)}
    )
    current = pd.DataFrame(
        {"age": rng.normal(50, 10, rows), "monthly_spend": rng.gamma(2.0, 30.0, rows) * 1.35}
    )
    for frame in (baseline, current):
        frame["score"] = rng.random(rows)
    return baseline, current


def test_drift_on_an_unimportant_feature_ranks_below_drift_on_the_important_one():
    baseline, current = drifted_pair()
    shares = {"monthly_spend": 0.95, "age": 0.05}

    by_psi = metrics.feature_psi(baseline, current, columns=["age", "monthly_spend"])
    weighted = metrics.feature_psi(
        baseline, current, columns=["age", "monthly_spend"], importance=shares
    )

    assert by_psi[0]["name"] == "age" and by_psi[0]["psi"] > 3 * by_psi[1]["psi"]
    assert [item["name"] for item in weighted] == ["monthly_spend", "age"]
    assert [item["importance"] for item in weighted] == [0.95, 0.05]


def test_the_report_says_how_much_of_the_models_importance_a_drifting_feature_holds():
    baseline, current = drifted_pair()
    quality = metrics.compare(
        current_scores=current["score"].to_numpy(),
        baseline_scores=baseline["score"].to_numpy(),
        current_sample=current,
        baseline_sample=baseline,
        thresholds=THRESHOLDS,
        baseline={"kind": "run", "run_id": 1, "date": "2026-12-04", "rows": len(baseline)},
        importance={"monthly_spend": 0.21, "age": 0.004},
    )

    lines = [f"{c.name}: {c.value}, {c.detail}" for c in drifting_features(quality)]
    spend_psi = quality["features"][0]["psi"]
    assert lines == [
        f"monthly_spend: PSI {spend_psi:.2f}, 21% of the model's importance",
        f"age: PSI {quality['features'][1]['psi']:.2f}, under 1% of the model's importance",
    ]


# --- through validation, the API and the page --------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("bucket", "default_quotas")
def test_validation_keeps_the_importance_and_the_api_and_the_page_show_it(
    worker, owner, api, alice, validated
):
    data = packages.dumps(packages.spend_decides("lightgbm"))
    version = validated(deployments.deploy(owner, io.BytesIO(data), "spend.dill", len(data)))

    assert version.state == PackageVersion.State.VALID, version.message
    latest = api.get(f"/api/v1/models/{version.deployment_id}/").json()["latest_version"]
    kept = latest["package"]["importance"]
    assert kept["method"] == "gain"
    top = kept["features"][0]
    assert top["name"] == "monthly_spend" and top["share"] > 0.9, kept
    page = alice.get(f"/models/{version.deployment_id}/").content.decode()
    assert '<canvas id="importance-chart"' in page
    assert "the model's own, by total gain" in page
    assert "js/importance_chart.js" in page


@pytest.mark.django_db
def test_the_model_page_lists_drifting_features_in_the_checks_order_with_their_importance(
    alice, owner
):
    from tests.factories.runs import make_models, make_runs, quality

    model = make_models(owner, 1, prefix="spend")[0]
    make_runs([model], 2)
    run = model.runs.exclude(quality_status="").first()
    run.quality = quality(0.3, 0.6) | {
        "features": [
            {"name": "monthly_spend", "psi": 0.35, "status": "alert", "importance": 0.21},
            {"name": "age", "psi": 1.2, "status": "alert", "importance": 0.004},
        ]
    }
    run.save()

    page = alice.get(f"/models/{model.id}/").content.decode()

    table = page[page.index('id="top-features"') :]
    assert '<th class="num">Importance</th>' in table
    assert table.index("monthly_spend") < table.index(">age<")
    assert '<td class="num mono">21 %</td>' in table
