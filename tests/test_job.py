"""The one-class check beside the metric choice, on counted predictions."""

import pytest
import torch

from sparsify_cnn.job import one_class_warning


def test_constant_predictions_warn_that_agreement_is_meaningless():
    warning = one_class_warning(torch.full((20,), 3), "agreement")
    assert warning.startswith("the dense model predicts class 3 for all 20 calibration images")
    assert "agreement with it is meaningless" in warning


def test_top1_warning_says_accuracy_is_the_class_share():
    warning = one_class_warning(torch.full((20,), 7), "top1")
    assert "class 7" in warning and "top-1 accuracy is only that class's share" in warning


@pytest.mark.parametrize("others, warns", [(0, True), (1, True), (2, False), (10, False)])
def test_threshold_is_95_percent_of_the_images(others, warns):
    # 20 images: 19 of one class (95%) warn, 18 (90%) do not.
    predictions = torch.tensor([5] * (20 - others) + list(range(others)))
    warning = one_class_warning(predictions, "agreement")
    assert (warning is not None) == warns
    if warns and others:
        assert f"class 5 for {100 * (20 - others) / 20:.1f}% of the 20 calibration images" in warning


def test_balanced_predictions_do_not_warn():
    assert one_class_warning(torch.arange(100) % 10, "agreement") is None
