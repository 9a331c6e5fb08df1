"""scoring/quality/levels.py: the one home of ok/warning/alert, worst, thresholds and the
words for a baseline."""

import math

import pytest
from django.test import override_settings

from scoring.quality import levels


@pytest.mark.parametrize(
    "value, status",
    [(0.0, "ok"), (0.0999, "ok"), (0.1, "warning"), (0.2499, "warning"), (0.25, "alert"),
     (3.0, "alert"), (None, None), (math.nan, None)],
)  # fmt: skip
def test_level_boundaries(value, status):
    assert levels.level(value, 0.1, 0.25) == status


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([], "ok"),
        ([None, None], "ok"),
        (["ok", None, "warning"], "warning"),
        (["warning", "alert", "ok"], "alert"),
        (["alert", "failed"], "failed"),
    ],
)
def test_worst_orders_failed_then_alert_then_warning_then_ok(statuses, expected):
    assert levels.worst(statuses) == expected


def test_above_is_strict_so_no_missing_scores_is_ok():
    assert levels.above(0.0, 0.0, 0.01) == "ok"
    assert levels.above(0.005, 0.0, 0.01) == "warning"
    assert levels.above(0.02, 0.0, 0.01) == "alert"
    assert levels.above(None, 0.0, 0.01) is None


@override_settings(PSI_WARN=0.2, PSI_ALERT=0.3, ADVERSARIAL_WARN=0.7, ADVERSARIAL_ALERT=0.8)
def test_thresholds_come_from_the_first_source_that_sets_them_else_the_site():
    used = {"psi_warn": 0.05}
    params = {"psi_warn": 0.5, "psi_alert": 0.6, "adversarial_warn": "high", "chunk_rows": 10}
    assert levels.thresholds(used, params, None) == {
        "psi_warn": 0.05,
        "psi_alert": 0.6,
        "adversarial_warn": 0.7,  # not a number: the site's
        "adversarial_alert": 0.8,
    }
    assert levels.thresholds() == {
        "psi_warn": 0.2,
        "psi_alert": 0.3,
        "adversarial_warn": 0.7,
        "adversarial_alert": 0.8,
    }


def test_a_baseline_reads_the_same_wherever_it_is_shown():
    run = {"kind": "run", "run_id": 12, "date": "2026-11-22", "rows": 98000}
    assert levels.baseline_text(run) == "the previous run, of 2026-11-22 (98,000 rows)"
    reference = {"kind": "reference_scores", "rows": 5000}
    assert levels.baseline_text(reference) == "the package's reference scores (5,000 scores)"
    assert levels.baseline_text(None).startswith("none: this is the first run")
    assert levels.baseline_label(run) == "previous run (2026-11-22)"
    assert levels.baseline_label(reference) == "reference scores"
