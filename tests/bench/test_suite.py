import json

import pytest
import torch

from sparsify_cnn import models
from sparsify_cnn.bench import BenchConfig, BenchResult, Entry, Timings, TVMSettings, bench, render_markdown, runners
from sparsify_cnn.errors import InputError
from sparsify_cnn.techniques.perforation.rewrite import PerforationConfig, insert_perforated_convs, perforated_ops
from sparsify_cnn.transform.capture import capture

pytestmark = pytest.mark.tvm  # compiles with TVM: `pytest -m 'not tvm'` leaves it out

FAST = dict(rounds=1, number=1, warmup=0)


@pytest.fixture(scope="module")
def lenet():
    torch.manual_seed(0)
    return capture(models.build("lenet").eval(), (1, 1, 28, 28)).graph_module


@pytest.fixture(scope="module")
def perforated(lenet):
    gm = insert_perforated_convs(lenet, PerforationConfig()).graph_module
    for op in perforated_ops(gm).values():
        kept = torch.zeros(op.out_hw, dtype=torch.bool)
        kept[::2, ::2] = True  # a quarter kept: 4x fewer MACs
        op.set_kept(kept)
    return gm


def test_dense_bench_times_every_backend_per_batch_and_compares_compiled_dense_to_the_baseline(lenet):
    images = torch.randn(3, 1, 28, 28)
    result = bench(lenet, images, BenchConfig(batches=(1, 2), backends=("eager", "tvm"), baseline="eager", **FAST))
    assert [(e.scope, e.batch) for e in result.entries] == [("model", 1), ("model", 2)]
    for entry in result.entries:
        assert entry.theoretical == 1.0 and entry.transformed is None
        assert entry.dense.ms["eager"] > 0 and entry.dense.ms["tvm"] > 0
        assert entry.speedup("eager") == pytest.approx(entry.dense.ms["eager"] / entry.dense.ms["tvm"])
    json.dumps(result.to_dict())  # the JSON the CLI writes


def test_transformed_bench_has_model_and_layer_rows_with_exact_theoretical_speedups(lenet, perforated):
    config = BenchConfig(batches=(1,), backends=("eager", "tvm"), baseline="tvm-dense", **FAST)
    result = bench(lenet, torch.randn(1, 1, 28, 28), config, transformed=perforated, label="lenet")
    model, *layers = result.entries
    assert result.technique == "perforation"
    assert (model.scope, model.kind) == ("model", "perforation") and model.macs < model.dense_macs
    assert [layer.name for layer in layers] == [op.layer_name for op in perforated_ops(perforated).values()]
    for layer in layers:
        assert layer.theoretical == pytest.approx(4.0, rel=0.05)  # odd map sizes keep ceil(n/2)^2
        assert layer.dense.ms["tvm"] > 0 and layer.transformed.ms["tvm"] > 0
        assert layer.speedup("tvm-dense") == pytest.approx(layer.dense.ms["tvm"] / layer.transformed.ms["tvm"])
    table = render_markdown(result)
    assert table.count("| layer |") == 2 * len(layers) and "measured vs tvm-dense" in table


def test_layers_are_timed_on_the_activations_that_reach_them(lenet, perforated, monkeypatch):
    seen = []
    real = runners.make_runner

    def spy(backend, module, x, tvm, progress=None):
        seen.append((type(module).__name__, x.clone()))
        return real(backend, module, x, tvm, progress)

    monkeypatch.setattr("sparsify_cnn.bench.suite.make_runner", spy)
    x = torch.randn(1, 1, 28, 28)
    bench(lenet, x, BenchConfig(batches=(1,), backends=("eager", "tvm"), **FAST), transformed=perforated)
    first_op = next(iter(perforated_ops(perforated).values()))
    layer_inputs = [x_ for name, x_ in seen if name == "PerforatedConv"]
    assert torch.equal(layer_inputs[0], x)  # the first conv sees the image
    with torch.no_grad():
        second_input = torch.max_pool2d(torch.relu(first_op(x)), 2)
    assert any(x_.shape == second_input.shape and torch.allclose(x_, second_input, atol=1e-6) for x_ in layer_inputs)


def test_a_backend_that_cannot_run_becomes_a_note_not_a_failure(lenet, monkeypatch):
    def broken(module):
        raise RuntimeError("inductor needs a C++ compiler\nmore text")

    monkeypatch.setattr(torch, "compile", broken)
    result = bench(lenet, torch.randn(1, 1, 28, 28), BenchConfig(batches=(1,), **FAST))
    entry = result.entries[0]
    assert entry.dense.ms["compile"] is None
    assert entry.dense.notes["compile"] == "RuntimeError: inductor needs a C++ compiler"
    assert "compile: RuntimeError: inductor needs a C++ compiler" in render_markdown(result)


def test_a_slower_transformed_kernel_is_flagged_below_crossover():
    def entry(dense_ms, mine_ms):
        return Entry("layer", "conv", "perforation", 1, 400, 100, Timings({"tvm": dense_ms}), Timings({"tvm": mine_ms}))

    assert entry(2.0, 2.5).below_crossover and entry(2.0, 2.0).below_crossover
    assert not entry(2.0, 1.0).below_crossover
    result = BenchResult("m", "perforation", BenchConfig(backends=("tvm",)), {"torch": 1, "tvm": "1"}, [entry(2.0, 2.5)])
    assert "0.80x (below crossover)" in render_markdown(result)


def test_the_default_baseline_is_the_fastest_dense_backend_this_tool_s_code_included():
    dense = Timings({"eager": 4.0, "compile": None, "ort": 2.0, "tvm": 3.0}, {"compile": "no C++ compiler"})
    entry = Entry("model", "m", "perforation", 1, 400, 100, dense, Timings({"tvm": 1.0}))
    assert BenchConfig().baseline == "fastest" and entry.fastest_dense() == "ort"
    assert entry.speedup("fastest") == 2.0 and entry.dense_speedup("fastest") == pytest.approx(2 / 3)
    assert entry.speedup("eager") == 4.0
    config = BenchConfig(backends=("eager", "compile", "ort", "tvm"))
    table = render_markdown(BenchResult("m", "perforation", config, {"torch": 1, "tvm": "1"}, [entry]))
    assert "| ONNX Runtime ms |" in table and "measured vs the fastest dense backend" in table
    assert "| 0.67x (ONNX Runtime fastest) |" in table and "| 2.00x |" in table
    faster_here = Entry("model", "m", "dense", 1, 400, 400, Timings({"eager": 4.0, "tvm": 3.0}))
    assert faster_here.fastest_dense() == "tvm" and faster_here.speedup("fastest") == 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(backends=("eager", "turbo", "tvm")), "unknown backend turbo"),
        (dict(baseline="quickest"), "unknown baseline"),
        (dict(backends=("tvm",), baseline="eager"), "needs the eager backend"),
        (dict(backends=("eager",), baseline="eager"), "cannot be left out"),
        (dict(batches=(0,)), "positive"),
    ],
)
def test_bad_configs_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(InputError, match=message):
        BenchConfig(**kwargs)


def test_tvm_on_a_target_missing_here_is_a_note(lenet):
    result = bench(lenet, torch.randn(1, 1, 28, 28),
                   BenchConfig(batches=(1,), backends=("tvm",), tvm=TVMSettings("cuda:sm_80"), **FAST))  # fmt: skip
    assert result.entries[0].dense.ms["tvm"] is None
    assert "no cuda device" in result.entries[0].dense.notes["tvm"]


def test_progress_counts_rows_up_to_the_bound_and_ends_once(lenet, perforated):
    calls = []
    config = BenchConfig(batches=(1,), backends=("eager", "tvm"), baseline="eager", **FAST)
    result = bench(lenet, torch.randn(1, 1, 28, 28), config, transformed=perforated,
                   progress=lambda *args, **extra: calls.append((*args, extra)))  # fmt: skip
    rows = 1 + len(perforated_ops(perforated))  # the model, then each layer
    assert {(phase, total, extra["unit"]) for phase, _, _, total, extra in calls} == {("bench", rows, "rows")}
    assert [done for _, _, done, _, _ in calls] == list(range(len(result.entries) + 1))
    assert [item for _, item, *_ in calls[:2]] == ["model at batch 1", "layer conv1 at batch 1"]
    assert [i for i, call in enumerate(calls) if call[4].get("end")] == [len(calls) - 1]
