"""The command's last lines warn when the accuracy budget held on calib only, and when the dense
model predicts one class (agreement with it means nothing)."""

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

from sparsify_cnn import models, pipeline
from sparsify_cnn.cli.main import cli
from sparsify_cnn.data import Split
from sparsify_cnn.model_io import save_program


def run(*args):
    """A small job: no crossover timings, no compilation."""
    return CliRunner().invoke(cli, [str(a) for a in args] + ["--no-crossover", "--target", "none"])


@pytest.fixture
def eight_calib_images(monkeypatch):
    """Jobs see only 8 calibration images (12.5 points each) and the whole test split: a search
    under epsilon 0.001 must keep all 8 right, and fits them rather than the data (and is quick)."""
    prepare = pipeline.prepare

    def tiny(*args, **kwargs):
        prepared = prepare(*args, **kwargs)
        data = prepared.data
        calib = Split(data.calib.x[:8], data.calib.y[:8])
        return dataclasses.replace(prepared, data=dataclasses.replace(data, calib=calib))

    monkeypatch.setattr(pipeline, "prepare", tiny)


def test_budget_held_on_calib_only_is_said_last(tmp_path, model_files, eight_calib_images):
    out = tmp_path / "out"
    result = run(model_files["pt2"], "--mode", "uniform_layer", "--data", "digits", "--epsilon", "0.001",
                 "--top-m", "2", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    acc = report["accuracy"]
    assert acc["calib"]["dense"] - acc["calib"]["sparse"] <= 0.001  # what the search promised
    assert acc["test"]["dense"] - acc["test"]["sparse"] > 0.001  # the situation under test
    test_images = report["budget"]["splits"]["test"]["images"]
    warning = result.stderr.strip().splitlines()[-1]
    assert warning.startswith("warning: the accuracy budget held on the calibration split but not on the test "
                              "split (calibration overfitting)")  # fmt: skip
    assert "over 8 images (1 image = 12.50 points)" in warning
    assert f"over {test_images} images (1 image = {100 / test_images:.2f} points)" in warning
    assert "more calibration images or a smaller --epsilon" in warning
    assert report["warnings"] == [warning.removeprefix("warning: ")]
    assert report["budget"]["verdict"] == "calibration_overfitting"
    assert f"**Warning:** {report['warnings'][0]}" in (out / "report.md").read_text()


@pytest.fixture(scope="module")
def constant_model(tmp_path_factory):
    """LeNet whose last layer always answers class 3."""
    model = models.build("lenet").eval()
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.nn.functional.one_hot(torch.tensor(3), last.out_features).float())
    path = tmp_path_factory.mktemp("constant") / "constant.pt2"
    save_program(model, (1, 28, 28), path, {"zoo": "lenet"})
    return path


@pytest.mark.parametrize("technique_args", [("--technique", "spatial", "--mode", "uniform_layer", "--top-m", "1"),
                                            ("--technique", "perforation", "--mask", "grid", "--speedup", "1.05"),
                                            ("--technique", "ssc", "--ssc-layer", "conv*=2,-")])  # fmt: skip
def test_one_class_dense_model_is_warned_about(tmp_path, constant_model, technique_args, eight_calib_images):
    out = tmp_path / "out"
    result = run(constant_model, *technique_args, "--metric", "agreement", "--data", "digits", "--out", out)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("warning: the dense model")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("warning: the dense model predicts class 3 for all 8 calibration images")
    assert "agreement with it is meaningless" in lines[0]
    report = json.loads((out / "report.json").read_text())
    assert report["warnings"][0] == lines[0].removeprefix("warning: ")
    assert f"**Warning:** {report['warnings'][0]}" in (out / "report.md").read_text()
