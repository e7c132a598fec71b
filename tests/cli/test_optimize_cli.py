import json

import pytest
from click.testing import CliRunner

from sparsify_cnn.cli.main import cli


def run(*args):
    """An optimize job without the crossover rule, whose verdicts depend on this machine's
    timings (the rule is tested with fixed timings in test_crossover_cli.py)."""
    return CliRunner().invoke(cli, [str(a) for a in args] + ["--no-crossover"])


def test_default_command_writes_plan_model_and_report(tmp_path, model_files):
    out = tmp_path / "out"
    result = run(model_files["pt2"], "--mode", "uniform_filter", "--data", "digits", "--epsilon", "0.01",
                 "--top-m", "2", "--max-cache-memory", "17MB", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "of MACs saved on the test split" in result.output
    assert "compiled for llvm into" in result.output
    for name in ("plan.json", "model.pt2", "report.md", "report.json", "operating_points.png", "masks/conv1.png",
                 "artifact/model.so", "artifact/manifest.json", "artifact/report.md", "latency.json"):  # fmt: skip
        assert (out / name).exists(), name
    # The last lines (before warnings): the artifact end to end against the dense model on eager
    # PyTorch and ONNX Runtime
    stdout = result.stdout.strip().splitlines()
    assert stdout[-4].startswith("latency here, batch 1,") and "artifact" in stdout[-3], result.output
    assert "eager PyTorch" in stdout[-2] and "x its speed" in stdout[-2] and "ONNX Runtime" in stdout[-1]
    latency = json.loads((out / "latency.json").read_text())
    assert [c["name"] for c in latency["candidates"]] == ["artifact", "eager", "ort"]
    assert latency["candidates"][0]["median_ms"] > 0 and latency["candidates"][1]["samples"] == 20
    report = json.loads((out / "report.json").read_text())
    assert report["metric"] == "top1"
    assert report["accuracy"]["calib"]["dense"] - report["accuracy"]["calib"]["sparse"] <= 0.01 + 1e-9
    assert 0 < report["macs"]["saved_fraction_test"] < 1
    assert report["search"]["evaluated"] > 0 and report["search"]["seconds"] > 0
    # 17 MB keeps conv1's maps (16.5 MB on 359 images) or conv2's, not both: two recording passes.
    assert report["search"]["dense_cache"] == {"peak_bytes": 359 * 20 * 24 * 24 * 4, "groups": 2, "recording_passes": 2}
    assert "layers in 2 groups, 2 recording passes" in (out / "report.md").read_text()
    # Where the time went, phase by phase: in the report (the job's) and phases.json (all of the command's).
    phases = json.loads((out / "phases.json").read_text())["seconds"]
    assert list(phases)[:4] == ["load and capture", "dense predictions", "dense cache", "first level"]
    assert {"patch level", "combining layers", "verification", "compile", "latency"} <= set(phases)
    assert min(phases.values()) >= 0 and "tuning" not in phases  # nothing was tuned
    assert "whole-network check" not in phases  # the plan's outcome is the back-off's last run, not run again
    assert report["phases"]["first level"] == phases["first level"] > 0
    assert "time by phase: load and capture" in result.output
    assert "Time by phase: dense predictions" in (out / "report.md").read_text()
    markdown = (out / "report.md").read_text()
    assert "| calib |" in markdown and "| test |" in markdown and "mispredicted" in markdown
    # The rewritten model loads back and runs the masks (reference semantics).
    from sparsify_cnn.model_io import load_model

    loaded = load_model(str(out / "model.pt2"))
    assert loaded.module(__import__("torch").zeros(2, 1, 28, 28)).shape == (2, 10)


def test_layer_options_on_a_sample_with_a_first_order_first_level(tmp_path, model_files):
    out = tmp_path / "out"
    result = run(model_files["pt2"], "--mode", "uniform_layer", "--data", "digits", "--search-images", "60",
                 "--first-level", "first-order", "--max-risk", "0.05", "--target", "none", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["search"]["search_images"] == 60 and report["plan"]["search"]["search_images"] == 60
    assert report["plan"]["search"]["first_level"] == "first_order" and report["plan"]["search"]["max_risk"] == 0.05
    assert report["accuracy"]["calib"]["dense"] - report["accuracy"]["calib"]["sparse"] <= 0.01 + 1e-9
    text = (out / "report.md").read_text()
    assert "scored on a seeded sample of 60 of the 359 calibration images" in text
    assert "use up at most 0.05 of the images' margins" in text


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("--mode", "uniform"), "Invalid value for '--mode'"),
        (("--epsilon", "1.5"), "'--epsilon': must be in [0, 1), got 1.5"),
        (("--patch-size", "1"), "'--patch-size': must be in 2..4, got 1"),
        (("--ones-range", "4-4"), "leaves no 2x2 pattern"),
        (("--ones-range", "x"), "is not a range"),
        (("--channel-group", "3", "--mode", "uniform_patch"), "does not divide"),
        (("--max-cache-memory", "1MB"), "--max-cache-memory 976.56 KiB is less than layer conv1 needs on 359"),
        (("--max-cache-memory", "lots"), "'lots' is not a memory size"),
        (("--search-images", "0"), "'--search-images': must be in 1.."),
        (("--first-level", "taylor"), "Invalid value for '--first-level'"),
        (("--max-risk", "0"), "'--max-risk': must be in (0, 1], got 0"),
    ],
)
def test_invalid_options_exit_2(tmp_path, model_files, args, fragment):
    result = run(model_files["pt2"], *args, "--out", tmp_path / "o")
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "Traceback" not in result.output


def test_model_without_conv_relu(tmp_path):
    result = run("zoo:mlp", "--out", tmp_path / "o")
    assert result.exit_code == 2
    assert "no layer of the model can take a Spatial op" in result.output


def test_measured_cost_times_layer_options_on_the_target_and_caches_them(tmp_path, model_files):
    out = tmp_path / "m"
    result = run(model_files["pt2"], "--mode", "uniform_layer", "--epsilon", "0.05", "--cost", "measured",
                 "--data", "digits", "--target", "none", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    timings = json.loads((out / "layer-timings.json").read_text())["timings"]
    kinds = {entry["signature"]["kind"] for entry in timings.values()}
    assert any("DenseBlock" in k for k in kinds) and any("WithResidual" in k or "SpatialConv" in k for k in kinds)
    report = json.loads((out / "report.json").read_text())
    assert report["plan"]["search"]["cost"] == "measured"
