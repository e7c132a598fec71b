"""The accuracy budget checked on both splits, on hand-computed numbers."""

import math

import pytest

from sparsify_cnn.report.budget import budget_summary, check_budget, points_per_image


def test_budget_kept_on_calib_but_not_on_test_is_calibration_overfitting():
    budget = check_budget((0.98, 0.98), (0.98, 0.96), (359, 360), 0.01)
    assert budget["verdict"] == "calibration_overfitting"
    calib, test = budget["splits"]["calib"], budget["splits"]["test"]
    assert (calib["held"], test["held"]) == (True, False)
    assert test["loss"] == pytest.approx(0.02) and test["loss_points"] == pytest.approx(2.0)
    assert calib["points_per_image"] == pytest.approx(100 / 359)
    assert test["points_per_image"] == pytest.approx(100 / 360)
    warning = budget["warning"]
    for fragment in ("held on the calibration split but not on the test split", "calibration overfitting",
                     "allows 1.00 points, 3 of the 359 calibration images", "calib lost 0.00 points over 359 images "
                     "(1 image = 0.28 points)", "test lost 2.00 points over 360 images (1 image = 0.28 points)",
                     "more calibration images", "smaller --epsilon"):  # fmt: skip
        assert fragment in warning, fragment
    assert budget_summary(budget) == warning


def test_relative_epsilon_is_a_share_of_the_dense_accuracy():
    # 0.6 points lost of a 50% dense accuracy: 0.6% absolute (within 1%), 1.2% relative (beyond).
    absolute = check_budget((0.5, 0.5), (0.5, 0.494), (100, 100), 0.01, "absolute")
    relative = check_budget((0.5, 0.5), (0.5, 0.494), (100, 100), 0.01, "relative")
    assert absolute["verdict"] == "held" and absolute["warning"] is None
    assert relative["verdict"] == "calibration_overfitting"
    assert relative["splits"]["test"]["loss"] == pytest.approx(0.012)
    # A relative 1% of 50% is half a point: 0 of 100 calibration images may be lost.
    assert "allows 0.50 points, 0 of the 100 calibration images" in relative["warning"]
    assert "1.20% of the dense accuracy (0.60 points)" in relative["warning"]


def test_a_loss_equal_to_epsilon_holds():
    # 0.98 - 0.97 is 0.010000000000000009 in floats: the searches' tolerance keeps it within.
    assert check_budget((0.98, 0.97), (0.98, 0.97), (100, 100), 0.01)["verdict"] == "held"


def test_held_budget_reports_both_splits_without_warning():
    budget = check_budget((0.9, 0.9), (0.9, 0.895), (200, 400), 0.01)
    assert budget["verdict"] == "held" and budget["warning"] is None
    summary = budget_summary(budget)
    assert summary.startswith("The accuracy budget held on both splits")
    assert "200 images (1 image = 0.50 points)" in summary and "400 images (1 image = 0.25 points)" in summary


def test_budget_exceeded_on_calibration_too():
    budget = check_budget((0.9, 0.85), (0.9, 0.8), (100, 100), 0.01)
    assert budget["verdict"] == "exceeded"
    assert "did not hold on the calibration split (nor on the test split)" in budget["warning"]


def test_no_epsilon_no_verdict_but_the_resolution_of_each_split():
    budget = check_budget((0.9, 0.8), (0.9, 0.7), (50, 40), None)
    assert budget["verdict"] == "no_budget" and budget["warning"] is None
    assert budget["splits"]["test"]["held"] is None and budget["splits"]["test"]["points_per_image"] == 2.5
    assert budget_summary(budget).startswith("No accuracy budget (epsilon) was set")


@pytest.mark.parametrize("kind", ["absolute", "relative"])
@pytest.mark.parametrize("test_final", [0.80, 0.79, 0.785, 0.7])
def test_verdict_matches_the_definition(kind, test_final):
    dense, epsilon = 0.8, 0.0125
    loss = (dense - test_final) / (dense if kind == "relative" else 1)
    budget = check_budget((dense, dense), (dense, test_final), (80, 80), epsilon, kind)
    assert budget["splits"]["test"]["held"] == (loss <= epsilon + 1e-9)
    assert budget["verdict"] == ("held" if loss <= epsilon + 1e-9 else "calibration_overfitting")


def test_points_per_image():
    assert points_per_image(359) == pytest.approx(0.2785515)
    assert math.isclose(points_per_image(4), 25.0)
