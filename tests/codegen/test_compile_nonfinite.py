"""The compile check fails on NaN or infinity on either side (NaN compares false, so a max over
differences used to report 0.00e+00 and pass)."""

import numpy as np
import pytest
import torch
from torch import nn

from sparsify_cnn.codegen import compile as compile_module
from sparsify_cnn.codegen.compile import CompiledMismatchError, compile_graph
from sparsify_cnn.transform.capture import capture

pytestmark = pytest.mark.tvm  # compiles with TVM: `pytest -m 'not tvm'` leaves it out

SHAPE = (2, 1, 6, 6)


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).eval()


def test_nan_in_the_torch_model_fails_the_check(tmp_path):
    model = _tiny()
    with torch.no_grad():
        model[3].bias[2] = float("nan")
    gm = capture(model, SHAPE).graph_module
    with pytest.raises(CompiledMismatchError, match=r"^the torch model's outputs on images 0-1 of the check "
                       r"\(nothing to compare the compiled model with\): 2 of 8 values are NaN or infinite$"):  # fmt: skip
        compile_graph(gm, SHAPE, tmp_path / "out", check_inputs=torch.rand(4, 1, 6, 6))
    assert not (tmp_path / "out").exists()  # nothing written


def test_nan_in_the_compiled_model_fails_the_check(tmp_path, monkeypatch):
    transform = compile_module.transform_params

    def poisoned(executable, params, device):  # a wrong lowering, as far as the check can tell
        packed = transform(executable, params, device)
        return [np.full_like(p, np.nan) if p.dtype.kind == "f" else p for p in packed]

    monkeypatch.setattr(compile_module, "transform_params", poisoned)
    gm = capture(_tiny(), SHAPE).graph_module
    with pytest.raises(CompiledMismatchError, match=r"^the compiled model's outputs on images 0-1 of the check "
                       r"\(the torch model's are finite\): 8 of 8 values are NaN or infinite$"):  # fmt: skip
        compile_graph(gm, SHAPE, tmp_path / "out", check_inputs=torch.rand(4, 1, 6, 6))
    monkeypatch.undo()
    result = compile_graph(gm, SHAPE, tmp_path / "out", check_inputs=torch.rand(4, 1, 6, 6))
    assert 0 < result.max_abs_diff < 1e-4  # the same model, unpoisoned, passes
