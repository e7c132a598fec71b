import json

import pytest
import torch
from click.testing import CliRunner

from sparsify_cnn.cli.main import cli
from sparsify_cnn.model_io import load_model
from sparsify_cnn.pipeline import prepare
from sparsify_cnn.plan import Plan
from sparsify_cnn.techniques.ssc.rewrite import ssc_ops


def run(*args):
    """An optimize job without the crossover rule, whose verdicts depend on this machine's
    timings (the rule is tested with fixed timings in test_crossover_cli.py)."""
    return CliRunner().invoke(cli, [str(a) for a in args] + ["--no-crossover"])


def test_ssc_job_writes_plan_model_report_and_a_matching_artifact(tmp_path, model_files):
    out = tmp_path / "out"
    result = run(model_files["pt2"], "--technique", "ssc", "--ssc-layer", "conv*=2,2", "--data", "digits", "--out", out)
    assert result.exit_code == 0, result.output
    assert "ssc: " in result.output and "% of parameters" in result.output and "compiled for llvm into" in result.output
    for name in ("plan.json", "model.pt2", "report.md", "report.json", "artifact/model.so", "artifact/manifest.json",
                 "artifact/report.md"):  # fmt: skip
        assert (out / name).exists(), name
    manifest = json.loads((out / "artifact" / "manifest.json").read_text())
    assert manifest["check"]["relative_diff"] <= 1e-4 and manifest["plan"]["technique"] == "ssc"
    report = json.loads((out / "report.json").read_text())
    rows = {row["name"]: row for row in report["layers"]}
    assert (rows["conv2"]["g"], rows["conv2"]["p"]) == (2, 2) and rows["conv2"]["params_after"] < rows["conv2"]["params_before"]
    assert not rows["conv1"]["ssc"] and "conv1" in report["skipped"]  # one input channel: g=2 cannot divide it
    assert report["params"]["fraction"] < 1 and report["macs"]["fraction"] < 1
    assert set(report["accuracy"]["test"]) == {"dense", "ssc"}
    markdown = (out / "report.md").read_text()
    assert "| `conv2` | ssc |" in markdown and "## Left dense" in markdown and "Not fine-tuned." in markdown

    # The plan re-applies to a fresh capture and gives the saved model's outputs.
    plan = Plan.load(out / "plan.json")
    assert plan.technique == "ssc" and plan.search["assignment"]["choices"] == {"conv2": [2, 2]}
    gm = plan.apply(prepare(str(model_files["pt2"])).captured.graph_module).graph_module
    assert list(ssc_ops(gm)) == ["conv2"]
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), load_model(str(out / "model.pt2")).module(x))


def test_target_params_with_one_epoch_of_finetuning_is_reported(tmp_path, model_files):
    out = tmp_path / "fine"
    result = run(model_files["pt2"], "--technique", "ssc", "--target-params", "0.95", "--finetune-epochs", "1",
                 "--finetune-lr", "0.01", "--target", "none", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "after" in result.output
    report = json.loads((out / "report.json").read_text())
    assert set(report["accuracy"]["test"]) == {"dense", "ssc", "finetuned"}
    assert list(report["phases"]) == ["dense predictions", "choice of (g, p)", "verification", "fine-tuning"]
    assert report["params"]["target"] == 0.95
    fine = report["finetune"]
    assert len(fine["epochs"]) == 1 and fine["config"]["lr"] == 0.01 and fine["config"]["schedule"] == "step"
    assert (out / "train-checkpoint.pt").exists()
    assert "Fine-tuned 1 epochs" in (out / "report.md").read_text()
    assert Plan.load(out / "plan.json").results["final"] == "finetuned"

    # The same command again picks the training checkpoint up instead of training from scratch.
    again = run(model_files["pt2"], "--technique", "ssc", "--target-params", "0.95", "--finetune-epochs", "1",
                "--finetune-lr", "0.01", "--target", "none", "--out", out)  # fmt: skip
    assert again.exit_code == 0, again.output
    resumed = json.loads((out / "report.json").read_text())
    assert resumed["finetune"]["resumed_from"] == 1
    assert resumed["accuracy"]["test"]["finetuned"] == report["accuracy"]["test"]["finetuned"]
    assert "resumed from epoch 1" in (out / "report.md").read_text()
    # --no-resume starts over; another config refuses the checkpoint with a clear error.
    fresh = run(model_files["pt2"], "--technique", "ssc", "--target-params", "0.95", "--finetune-epochs", "1",
                "--finetune-lr", "0.01", "--target", "none", "--no-resume", "--out", out)  # fmt: skip
    assert fresh.exit_code == 0 and json.loads((out / "report.json").read_text())["finetune"]["resumed_from"] == 0
    # Without --finetune-lr the default, 0.01, makes it the same run: it resumes.
    default = run(model_files["pt2"], "--technique", "ssc", "--target-params", "0.95", "--finetune-epochs", "1",
                  "--target", "none", "--out", out)  # fmt: skip
    assert default.exit_code == 0, default.output
    assert json.loads((out / "report.json").read_text())["finetune"]["resumed_from"] == 1
    other = run(model_files["pt2"], "--technique", "ssc", "--target-params", "0.95", "--finetune-epochs", "1",
                "--finetune-lr", "0.1", "--target", "none", "--out", out)  # fmt: skip
    assert other.exit_code != 0 and "written by another run" in other.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--technique", "ssc"], "exactly one of --preset, --target-params, --ssc-layer (got none)"),
        (["--technique", "ssc", "--target-params", "0.3", "--ssc-layer", "conv2=2,2"], "(got --target-params, --ssc-layer)"),
        (["--technique", "ssc", "--ssc-layer", "conv2"], "is not GLOB=G,P"),
        (["--technique", "ssc", "--target-params", "0.3", "--epsilon", "0.01"], "not apply to --technique ssc"),
        (["--target-params", "0.3"], "only with --technique ssc"),
        (["--technique", "ssc", "--preset", "no-such"], "Invalid value for '--preset'"),
        # every technique's options, checked alike through the registry
        (["--technique", "perforation", "--mode", "uniform_layer"], "--mode applies only with --technique spatial"),
        (["--mask", "grid", "--interpolation", "zero"], "--mask, --interpolation apply only with --technique perforation"),
        (["--finetune-epochs", "2"], "--finetune-epochs does not apply to --technique spatial"),
        (["--technique", "ssc", "--preset", "vgg19-cifar10-10", "--cost", "measured", "--epsilon", "0.1"],
         "--cost and --epsilon do not apply to --technique ssc"),
    ],
)
def test_bad_ssc_option_combinations_exit_2_with_one_error_line(tmp_path, model_files, args, message):
    result = run(model_files["pt2"], *args, "--out", tmp_path / "bad")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0]


def test_no_layer_taking_ssc_is_an_error_naming_the_reasons(tmp_path, model_files):
    result = run(model_files["pt2"], "--technique", "ssc", "--ssc-layer", "conv1=2,2", "--target", "none",
                 "--out", tmp_path / "none")  # fmt: skip
    assert result.exit_code != 0
    assert "no layer of the model can take SSC" in result.output and "x no (g, p) given for it" in result.output


def test_preset_choices_match_the_package_and_help_needs_no_torch():
    import subprocess
    import sys

    from sparsify_cnn.techniques.ssc.cli import PRESETS as SSC_PRESETS
    from sparsify_cnn.techniques.ssc.presets import PRESETS

    assert SSC_PRESETS == tuple(PRESETS)
    code = "import sys, sparsify_cnn.cli.main; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
