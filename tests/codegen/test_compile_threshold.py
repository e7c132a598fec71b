"""The compile check tells a zero prediction at its threshold from a wrong compiled model."""

import numpy as np
import pytest
import torch
from torch import nn

from sparsify_cnn.codegen.compile import CompiledMismatchError, OutputComparison
from sparsify_cnn.techniques.spatial.rewrite import insert_spatial_ops, spatial_ops
from sparsify_cnn.transform.capture import capture


@pytest.fixture
def predicting_model():
    """A 1x1 conv (weight 1) and ReLU whose Spatial op computes the top-left of each 2x2 patch
    and predicts the rest zero where that is zero."""
    conv = nn.Conv2d(1, 1, 1, bias=False)
    nn.init.ones_(conv.weight)
    gm = insert_spatial_ops(capture(nn.Sequential(conv, nn.ReLU()).eval(), (1, 1, 4, 4)).graph_module).graph_module
    (op,) = spatial_ops(gm).values()
    assert op.patch_size == 2
    mask = torch.zeros(op.mask.shape, dtype=torch.bool)
    mask[:, ::2, ::2] = True
    op.set_mask(mask)
    return gm


def _image(top_left: float) -> torch.Tensor:
    x = torch.ones(1, 1, 4, 4)
    x[..., 0, 0] = top_left
    return x


def test_an_image_at_the_threshold_is_left_out_and_a_wrong_output_is_not(predicting_model):
    at_threshold, clear = _image(0.0), _image(-1.0)  # top-left exactly 0: any rounding decides
    with torch.no_grad():
        expected_clear = predicting_model(clear).numpy()
    assert expected_clear[..., :2, :2].max() == 0  # predicted zero, without doubt
    comparison = OutputComparison(predicting_model)
    comparison.add(at_threshold, torch.relu(at_threshold).numpy(), "image 0")  # decided apart: the patch kept
    for i in range(9):
        comparison.add(clear, expected_clear, f"image {i + 1}")
    assert comparison.result() == (0.0, 0.0, 1)

    wrong = expected_clear.copy()
    wrong[..., 3, 3] += 0.5  # off where no decision is near: counted
    comparison.add(clear, wrong, "image 10")
    worst, relative, left_out = comparison.result()
    assert (worst, left_out) == (pytest.approx(0.5), 1) and relative > 0.1


def test_a_value_within_rounding_of_zero_is_at_the_threshold_and_one_past_it_is_not(predicting_model):
    """Another thread count rounds the computed value to the other side of 0: the torch model
    computes it as a few 1e-7 above, the compiled one decided below and predicted the patch
    zero. A value 1e-3 above 0 predicted zero is a wrong kernel."""
    clear = _image(-1.0)
    with torch.no_grad():
        expected_clear = predicting_model(clear).numpy()
    for top_left, left_out in ((3e-7, 1), (-3e-7, 1), (1e-3, 0)):
        x = _image(top_left)
        decided_apart = torch.relu(x).numpy()
        decided_apart[..., :2, :2] = 0 if top_left > 0 else 1  # the compiled side took the other sign
        comparison = OutputComparison(predicting_model)
        comparison.add(x, decided_apart, "image 0")
        for i in range(9):
            comparison.add(clear, expected_clear, f"image {i + 1}")
        worst, _, at_threshold = comparison.result()
        assert at_threshold == left_out and worst == (0.0 if left_out else pytest.approx(1.0)), top_left


def test_too_many_images_at_the_threshold_fail_the_check(predicting_model):
    comparison = OutputComparison(predicting_model)
    x = _image(0.0)
    for i in range(2):
        comparison.add(x, torch.relu(x).numpy(), f"image {i}")
    with pytest.raises(CompiledMismatchError, match=r"on 2 of 2 check images .* \(zero predictions at their threshold\)"):
        comparison.result()


def test_non_finite_outputs_fail_the_comparison(predicting_model):
    x = _image(-1.0)
    with pytest.raises(CompiledMismatchError, match="compiled model's outputs on image 0"):
        OutputComparison(predicting_model).add(x, np.full((1, 1, 4, 4), np.nan, dtype=np.float32), "image 0")
