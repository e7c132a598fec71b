import json

import pytest
import torch
from click.testing import CliRunner

from sparsify_cnn.cli.main import cli
from sparsify_cnn.model_io import load_model
from sparsify_cnn.pipeline import prepare
from sparsify_cnn.plan import Plan
from sparsify_cnn.techniques.perforation.rewrite import perforated_ops


def run(*args):
    """An optimize job without the crossover rule, whose verdicts depend on this machine's
    timings (the rule is tested with fixed timings in test_crossover_cli.py)."""
    return CliRunner().invoke(cli, [str(a) for a in args] + ["--no-crossover"])


def test_perforation_job_writes_plan_model_report_and_a_matching_artifact(tmp_path, model_files):
    out = tmp_path / "out"
    result = run(model_files["pt2"], "--technique", "perforation", "--mask", "grid", "--speedup", "1.8",
                 "--data", "digits", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "fewer MACs" in result.output and "compiled for llvm into" in result.output
    for name in ("plan.json", "model.pt2", "report.md", "report.json", "operating_points.png", "masks/conv2.png",
                 "artifact/model.so", "artifact/manifest.json", "artifact/report.md"):  # fmt: skip
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    assert report["macs"]["speedup"] >= 1.8 and report["search"]["stop_reason"] == "reached the target speedup 1.8x"
    assert list(report["phases"]) == ["dense predictions", "grid masks", "cost model", "greedy steps", "verification"]
    points = report["operating_points"]
    assert points[0]["layer"] is None and all(p["layer"] in ("conv1", "conv2") for p in points[1:])
    assert [p["macs"] for p in points] == sorted((p["macs"] for p in points), reverse=True)
    manifest = json.loads((out / "artifact" / "manifest.json").read_text())
    assert manifest["check"]["relative_diff"] <= 1e-4 and manifest["plan"]["technique"] == "perforation"
    markdown = (out / "report.md").read_text()
    assert "Operating points" in markdown and "| `conv2` | perforation |" in markdown

    # The plan re-applies to a fresh capture and gives the saved model's outputs.
    plan = Plan.load(out / "plan.json")
    gm = plan.apply(prepare(str(model_files["pt2"])).captured.graph_module).graph_module
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), load_model(str(out / "model.pt2")).module(x))
    assert any(op.rate > 0 for op in perforated_ops(gm).values())


def test_finetuning_is_reported_and_label_free_data_cannot_finetune(tmp_path, model_files):
    out = tmp_path / "fine"
    result = run(model_files["pt2"], "--technique", "perforation", "--mask", "uniform", "--speedup", "1.5",
                 "--finetune-epochs", "1", "--target", "none", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert set(report["accuracy"]["test"]) == {"dense", "perforated", "finetuned"}
    assert len(report["finetune"]["epochs"]) == 1 and report["finetune"]["resumed_from"] == 0
    assert "finetuned" in (out / "report.md").read_text()
    again = run(model_files["pt2"], "--technique", "perforation", "--mask", "uniform", "--speedup", "1.5",
                "--finetune-epochs", "1", "--target", "none", "--out", out)  # fmt: skip
    assert again.exit_code == 0, again.output
    resumed = json.loads((out / "report.json").read_text())
    assert resumed["finetune"]["resumed_from"] == 1 and resumed["search"]["checkpoint_records_resumed"] > 0
    assert resumed["accuracy"]["test"] == report["accuracy"]["test"]

    import numpy as np

    np.savez(tmp_path / "free.npz", x=np.random.default_rng(0).random((40, 1, 28, 28), dtype=np.float32))
    label_free = run(model_files["pt2"], "--technique", "perforation", "--speedup", "1.5", "--finetune-epochs", "1",
                     "--data", tmp_path / "free.npz", "--target", "none", "--out", tmp_path / "free")  # fmt: skip
    assert label_free.exit_code == 2 and "fine-tuning needs labelled data" in label_free.output
    assert not (tmp_path / "free" / "search-checkpoint.json").exists()  # refused before any search


def test_measured_cost_times_compiled_layers_once_each(tmp_path, model_files):
    out = tmp_path / "measured"
    result = run(model_files["pt2"], "--technique", "perforation", "--mask", "grid", "--cost", "measured",
                 "--speedup", "1.2", "--target", "none", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    timings = json.loads((out / "layer-timings.json").read_text())["timings"]
    signatures = [json.dumps(entry["signature"], sort_keys=True) for entry in timings.values()]
    kinds = [entry["signature"]["kind"] for entry in timings.values()]
    # each layer's dense conv (as the dense network compiles it) and at least one rate, each measured once
    assert len(signatures) == len(set(signatures)) and kinds.count("conv2d") == 2 and kinds.count("perforation") >= 2
    report = json.loads((out / "report.json").read_text())
    search = report["search"]
    assert search["cost_unit"] == "ms" and "speedup (ms)" in (out / "report.md").read_text()
    # Against the scheduled dense conv, LeNet's small perforated layers may save no time at all:
    # the search then takes nothing slower and says why it stopped short of the target.
    assert search["speedup_by_cost"] >= 1.2 or (search["speedup_by_cost"] >= 1.0 and "not faster" in search["stop_reason"])


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("--mask", "square"), "Invalid value for '--mask'"),
        (("--speedup", "0.5"), "'--speedup': must be > 1, got 0.5"),
        (("--interpolation", "cubic"), "Invalid value for '--interpolation'"),
    ],
)
def test_invalid_perforation_options_exit_2(tmp_path, model_files, args, fragment):
    result = run(model_files["pt2"], "--technique", "perforation", *args, "--out", tmp_path / "o")
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "Traceback" not in result.output


def test_a_model_without_perforable_convs(tmp_path):
    result = run("zoo:mlp", "--technique", "perforation", "--out", tmp_path / "o")
    assert result.exit_code == 2
    assert "no layer of the model can be perforated" in result.output
