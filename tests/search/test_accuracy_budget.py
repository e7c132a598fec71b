"""One accuracy-budget rule: the searches' test, their floor and the report's check agree."""

import pytest

from sparsify_cnn.errors import InputError
from sparsify_cnn.report.budget import check_budget
from sparsify_cnn.search.accuracy_budget import accuracy_floor, accuracy_loss, check_epsilon, within


@pytest.mark.parametrize("kind", ["absolute", "relative"])
@pytest.mark.parametrize("dense", [0.0, 0.5, 0.9, 0.98, 1.0])
@pytest.mark.parametrize("epsilon", [0.0, 0.01, 0.05])
def test_the_floor_is_the_lowest_accuracy_within_budget(kind, dense, epsilon):
    for images in (359, 1000):  # accuracies are counts of images
        for correct in range(images + 1):
            accuracy = correct / images
            assert within(dense, accuracy, epsilon, kind) == (accuracy >= accuracy_floor(dense, epsilon, kind))


def test_one_image_more_or_less_at_the_boundary():
    # 0.9 - 0.89 is 0.010000000000000009 in floats: still within one point
    assert within(0.9, 0.89, 0.01) and not within(0.9, 0.8899, 0.01)
    assert within(0.5, 0.495, 0.01, "relative") and not within(0.5, 0.494, 0.01, "relative")
    assert accuracy_loss(0.0, 0.0, "relative") == 0.0  # no division by a zero dense accuracy


def test_the_report_checks_each_split_with_the_same_rule():
    budget = check_budget((0.9, 0.89), (0.9, 0.88), (100, 100), 0.01)
    assert budget["splits"]["calib"]["held"] and not budget["splits"]["test"]["held"]
    assert budget["verdict"] == "calibration_overfitting"


@pytest.mark.parametrize("epsilon, kind", [(-0.1, "absolute"), (1.0, "absolute"), (0.01, "points")])
def test_bad_budgets_are_refused(epsilon, kind):
    with pytest.raises(InputError):
        check_epsilon(epsilon, kind)
