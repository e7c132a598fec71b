"""The ONNX Runtime backend: it runs where onnxruntime is installed, and says why not where not."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from torch import nn

from sparsify_cnn.bench.runners import BackendUnavailable, TVMSettings, make_runner


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()


def test_without_onnxruntime_the_backend_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(BackendUnavailable, match="pip install onnxruntime"):
        make_runner("ort", _model(), torch.randn(1, 3, 8, 8), TVMSettings())


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime is not installed")
def test_with_onnxruntime_the_model_runs_and_matches_torch(monkeypatch):
    import onnxruntime

    outputs = []
    original = onnxruntime.InferenceSession.run
    monkeypatch.setattr(onnxruntime.InferenceSession, "run", lambda self, *a: outputs.append(original(self, *a)))
    model, x = _model(), torch.randn(2, 3, 8, 8)
    make_runner("ort", model, x, TVMSettings())()
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(outputs[-1][0]), model(x), rtol=1e-4, atol=1e-5)
