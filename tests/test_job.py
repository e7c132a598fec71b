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


@pytest.mark.parametrize("metric", ["top1", "agreement"])
def test_scores_run_the_dense_model_once_per_split_and_equal_a_fresh_evaluation(metric, trained_lenet, digits28):
    """Verification scores the dense and the transformed model on calib and test: the dense model
    runs on calib once (for the search) and on test once, whatever is scored."""
    import copy

    from sparsify_cnn.evaluate import evaluate
    from sparsify_cnn.job import start_job
    from sparsify_cnn.model_io import LoadedModel
    from sparsify_cnn.pipeline import Prepared
    from sparsify_cnn.transform.capture import capture

    loaded = LoadedModel(trained_lenet, "zoo:lenet", "zoo", (1, 28, 28))
    job = start_job(Prepared(loaded, capture(trained_lenet, (1, 1, 28, 28)), digits28), metric, "a test")
    other = copy.deepcopy(trained_lenet)
    with torch.no_grad():
        other.conv1.weight.mul_(0.5)  # another model, which disagrees on some images
    images = []
    job.dense_gm.register_forward_hook(lambda module, args, out: images.append(len(args[0])))
    scores = job.score_splits({"dense": (job.dense_gm, "the dense model"), "other": (other, "another model")})
    assert sum(images) == len(digits28.test)
    for split in ("calib", "test"):
        for kind, model in (("dense", trained_lenet), ("other", other)):
            reference = trained_lenet if metric == "agreement" else None
            assert scores[split][kind] == evaluate(model, digits28.split(split), reference, metric)
    assert scores["calib"]["other"].value < scores["calib"]["dense"].value
