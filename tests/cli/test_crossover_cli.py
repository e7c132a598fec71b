"""The crossover rule in each job, with fixed layer timings (real ones are this machine's)."""

import json

import pytest
import torch
from click.testing import CliRunner

from sparsify_cnn.cli.main import cli
from sparsify_cnn.codegen import measure
from sparsify_cnn.model_io import load_model
from sparsify_cnn.pipeline import prepare
from sparsify_cnn.plan import Plan
from sparsify_cnn.techniques.spatial.rewrite import spatial_ops
from sparsify_cnn.techniques.ssc.rewrite import ssc_ops

pytestmark = pytest.mark.tvm  # compiles with TVM: `pytest -m 'not tvm'` leaves it out


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def timings(monkeypatch):
    """Layer times by (module class, input channels): the transformed conv1 is faster than its
    dense layer, every other transformed layer is slower."""
    seen = []

    def measure_ms(module, input_shape, target="llvm", tune_trials=0, records=None, example=None, **_):
        name = type(module).__name__
        seen.append((name, input_shape[1]))
        if name in ("Conv2d", "DenseBlock"):
            return 1.0
        return 0.5 if input_shape[1] == 1 else 2.0

    monkeypatch.setattr(measure, "measure_ms", measure_ms)
    return seen


def _check_plan_reapplies(out, model_file):
    plan = Plan.load(out / "plan.json")
    gm = plan.apply(prepare(str(model_file)).captured.graph_module).graph_module
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), load_model(str(out / "model.pt2")).module(x))
    return plan, gm


def test_perforated_layers_that_are_not_faster_are_left_dense(tmp_path, model_files, timings):
    out = tmp_path / "p"
    result = run(model_files["pt2"], "--technique", "perforation", "--mask", "grid", "--speedup", "1.8",
                 "--data", "digits", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "left dense as not faster: conv2" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["crossover"]["left_dense"] == ["conv2"]
    layers = {row["layer"]: row for row in report["crossover"]["layers"]}
    assert layers["conv2"]["speedup"] == 0.5 and layers["conv1"]["below_crossover"] is False
    assert layers["conv1"]["eager_ms"] > 0  # timed for real: the report sets each layer against eager too
    assert "faster than the faster of this tool's and eager PyTorch's dense layer" in result.output
    rows = {row["name"]: row for row in report["layers"]}
    assert rows["conv2"]["kept"] == 1 and rows["conv2"]["performed_macs"] == rows["conv2"]["dense_macs"]
    assert "below crossover: left dense" in (out / "report.md").read_text()
    plan, _ = _check_plan_reapplies(out, model_files["pt2"])
    assert bool(plan.masks["conv2"].all()) and not bool(plan.masks["conv1"].all())
    assert json.loads((tmp_path / "p" / "layer-timings.json").read_text())["timings"]


def test_spatial_layers_that_are_not_faster_are_left_dense_and_compile_as_dense(tmp_path, model_files, timings):
    out = tmp_path / "s"
    result = run(model_files["pt2"], "--mode", "uniform_filter", "--epsilon", "0.05", "--data", "digits",
                 "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    timed = {row["layer"] for row in report["crossover"]["layers"]}
    assert "conv2" in timed and report["crossover"]["left_dense"] == ["conv2"]
    rows = {row["name"]: row for row in report["layers"]}
    assert rows["conv2"]["mask_ones"] == 1.0 and rows["conv2"]["performed_macs"] == rows["conv2"]["dense_macs"]
    plan, gm = _check_plan_reapplies(out, model_files["pt2"])
    assert spatial_ops(gm)["conv2"].all_ones
    manifest = json.loads((out / "artifact" / "manifest.json").read_text())
    assert manifest["check"]["relative_diff"] <= 1e-4


def test_ssc_layers_that_are_not_faster_stay_dense_convs(tmp_path, model_files, timings):
    out = tmp_path / "c"
    result = run(model_files["pt2"], "--technique", "ssc", "--ssc-layer", "conv2=2,2", "--data", "digits",
                 "--target", "llvm", "--out", out)  # fmt: skip
    assert result.exit_code != 0 and "no SSC layer is faster than its dense conv" in result.output
    assert result.output.count("\n") == 1


def test_no_crossover_keeps_every_layer_and_says_so(tmp_path, model_files, timings):
    out = tmp_path / "n"
    result = run(model_files["pt2"], "--technique", "ssc", "--ssc-layer", "conv2=2,2", "--data", "digits",
                 "--no-crossover", "--target", "none", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not timings
    report = json.loads((out / "report.json").read_text())
    assert report["crossover"] is None and "Not checked" in (out / "report.md").read_text()
    _, gm = _check_plan_reapplies(out, model_files["pt2"])
    assert list(ssc_ops(gm)) == ["conv2"]


def test_ssc_keeps_the_faster_layers_and_trains_the_others_as_dense_convs(tmp_path, monkeypatch):
    def measure_ms(module, input_shape, target="llvm", tune_trials=0, records=None, example=None, **_):
        if type(module).__name__ == "SSCConv":
            return 2.0 if module.out_channels == 64 else 0.5  # conv3 (32 -> 64) is slower as SSC
        return 1.0

    monkeypatch.setattr(measure, "measure_ms", measure_ms)
    out = tmp_path / "cq"
    result = run("zoo:cq", "--technique", "ssc", "--ssc-layer", "conv*=2,2", "--data", "digits",
                 "--finetune-epochs", "1", "--target", "llvm", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["crossover"]["left_dense"] == ["conv3"]
    rows = {row["name"]: row for row in report["layers"]}
    assert rows["conv2"]["ssc"] and not rows["conv3"]["ssc"] and rows["conv3"]["kind"] == "conv"
    assert rows["conv3"]["note"] == "below crossover: left dense"
    plan = Plan.load(out / "plan.json")
    assert [entry[0] for entry in plan.config["per_layer"]] == ["conv2"]


def test_a_layer_the_budget_needs_keeps_its_kernel_though_not_faster(tmp_path, model_files, timings, monkeypatch):
    """Leaving a layer dense can lose accuracy too (a plan is not monotone in its layers): the
    plan is checked on calib after the rule, and a layer it needs takes its kernel back."""
    from sparsify_cnn.job import JobStart

    asked = []

    def holds_budget(self, model, epsilon, kind="absolute"):
        asked.append(epsilon)
        return not spatial_ops(model)["conv2"].all_ones  # this plan needs conv2's mask

    monkeypatch.setattr(JobStart, "holds_budget", holds_budget)
    out = tmp_path / "k"
    result = run(model_files["pt2"], "--mode", "uniform_filter", "--epsilon", "0.05", "--data", "digits",
                 "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert asked == [0.05]  # conv2 back, then the searched plan: held when the search chose it
    assert "kept though not faster, for the accuracy budget: conv2" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["crossover"]["left_dense"] == [] and report["crossover"]["kept_for_budget"] == ["conv2"]
    assert "below crossover: kept for the accuracy budget" in (out / "report.md").read_text()
    plan, gm = _check_plan_reapplies(out, model_files["pt2"])
    assert not spatial_ops(gm)["conv2"].all_ones
