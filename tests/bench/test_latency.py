"""The main job's end-to-end latency: the artifact as deployments load it, timed beside the dense
model on eager PyTorch (and ONNX Runtime), each in blocks of its own; lines that say how many
times faster the artifact runs, and why a baseline could not run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsify_cnn.bench import latency
from sparsify_cnn.bench.latency import Timed, end_to_end, summary_lines
from sparsify_cnn.bench.runners import BackendUnavailable


def test_the_lines_give_medians_spreads_and_how_many_times_faster_the_artifact_runs():
    timed = [Timed("artifact", [1.0, 2.0, 3.0]), Timed("eager", [4.0, 6.0, 5.0]), Timed("ort", unavailable="no onnxruntime")]
    lines = summary_lines(timed, batch=4, threads=2)
    assert lines[0] == "latency here, batch 4, 2 threads (median [min-max] of 3 runs):"
    assert lines[1].split() == ["artifact", "2.00", "ms", "[1.00-3.00]"]
    assert lines[2].endswith("5.00 ms [4.00-6.00]  artifact 2.50x its speed")
    assert lines[3].endswith("n/a (no onnxruntime)")
    assert timed[1].to_dict() == {"name": "eager", "median_ms": 5.0, "min_ms": 4.0, "max_ms": 6.0, "samples": 3}


@pytest.mark.tvm
def test_the_artifact_and_each_baseline_are_timed_in_turns(tmp_path, monkeypatch):
    from sparsify_cnn.codegen.compile import compile_graph
    from sparsify_cnn.transform.capture import capture

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()
    graph = capture(model, (1, 3, 6, 6)).graph_module
    x = torch.randn(1, 3, 6, 6)
    compile_graph(graph, (1, 3, 6, 6), tmp_path / "artifact", check_inputs=x)
    made = []

    def runner(backend, module, inputs, settings):
        made.append(backend)
        if backend == "ort":
            raise BackendUnavailable("onnxruntime is not installed")
        return lambda: module(inputs)

    monkeypatch.setattr(latency, "make_runner", runner)
    timed = end_to_end(tmp_path / "artifact", graph, x, rounds=3, warmup=1, passes=2)
    assert made == ["eager", "ort"] and [t.name for t in timed] == ["artifact", "eager", "ort"]
    assert len(timed[0].samples) == len(timed[1].samples) == 6 and min(timed[0].samples) > 0
    assert timed[2].samples == [] and timed[2].unavailable == "onnxruntime is not installed"
