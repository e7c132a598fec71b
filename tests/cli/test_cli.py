import json

import numpy as np
import pytest
from click.testing import CliRunner

from sparsify_cnn.cli.main import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _assert_user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_lists_commands_with_defaults():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("train", "inspect", "zoo"):
        assert command in result.output
    train_help = run("train", "--help").output
    assert "[default: digits]" in train_help and "[default: 8]" in train_help
    assert "[default: auto]" in run("inspect", "--help").output


def test_zoo_lists_every_model():
    from sparsify_cnn.models import zoo_names

    output = run("zoo").output
    for name in zoo_names():
        assert f"zoo:{name}" in output


def test_train_then_inspect_the_demo_model(tmp_path):
    out = tmp_path / "lenet.pt2"
    result = run("train", "zoo:lenet", "--data", "digits", "--epochs", 1, "--out", out)
    assert result.exit_code == 0, result.output
    assert "epoch   1" in result.output and "test split: top-1 accuracy" in result.output
    assert out.exists()
    report = tmp_path / "acc.json"
    result = run("inspect", out, "--data", "digits", "--json", report)
    assert result.exit_code == 0, result.output
    assert "| `conv2` | conv | 50x8x8 | 25,050 | 1,600,000 |" in result.output
    assert "test split of digits: top-1 accuracy" in result.output
    data = json.loads(report.read_text())
    assert data["total_macs"] == 2_293_000 and data["test"]["metric"] == "top1"


def test_inspect_a_state_dict_with_arch(model_files):
    result = run("inspect", model_files["state_dict"], "--arch", "zoo:lenet")
    assert result.exit_code == 0, result.output
    assert "2,293,000" in result.output


@pytest.mark.parametrize(
    "kind, fragment",
    [
        ("torchscript", "TorchScript"),
        ("tensor", "holds a tensor, not a model"),
        ("empty", "is empty"),
        ("corrupt", "not a readable PyTorch file"),
        ("pickle", "--trust-pickle"),
        ("state_dict", "--arch"),
    ],
)
def test_bad_model_files_exit_2_with_one_line(model_files, kind, fragment):
    _assert_user_error(run("inspect", model_files[kind]), model_files[kind].name, fragment)


def test_trusted_pickle_is_accepted_and_needs_a_shape(model_files):
    _assert_user_error(run("inspect", model_files["pickle"], "--trust-pickle"), "--input-shape N,C,H,W")
    result = run("inspect", model_files["pickle"], "--trust-pickle", "--input-shape", "1,1,28,28")
    assert result.exit_code == 0, result.output


def test_missing_model_and_bad_options(tmp_path):
    _assert_user_error(run("inspect", tmp_path / "missing.pt2"), "missing.pt2", "does not exist")
    result = run("inspect", "zoo:lenet", "--input-shape", "1,2,3")
    assert result.exit_code == 2 and "four positive integers" in result.output
    _assert_user_error(run("train", "zoo:lenet", "--epochs", -1, "--out", tmp_path / "m.pt2"), "epochs")


def test_data_that_does_not_fit_the_model(tmp_path, model_files):
    np.savez(tmp_path / "rgb.npz", x=np.zeros((9, 3, 28, 28)), y=np.arange(9) % 2)
    _assert_user_error(
        run("inspect", model_files["pt2"], "--data", tmp_path / "rgb.npz"), "the model takes (1, 28, 28)"
    )
    np.savez(tmp_path / "many.npz", x=np.zeros((30, 1, 28, 28)), y=np.arange(30) % 15)
    _assert_user_error(
        run("inspect", model_files["pt2"], "--data", tmp_path / "many.npz"), "labels up to 14; the model has 10 outputs"
    )
    _assert_user_error(run("inspect", "zoo:lenet", "--data", tmp_path / "none.npz"), "does not exist")


def test_capture_failure_names_the_module(tmp_path, monkeypatch):
    (tmp_path / "gated.py").write_text(
        "import torch\n"
        "class Gate(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return x if x.sum() > 0 else -x\n"
        "def build():\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), Gate())\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import torch
    from gated import build

    torch.save(build().state_dict(), tmp_path / "gated.pt")
    args = ("inspect", tmp_path / "gated.pt", "--arch", "gated:build", "--input-shape", "1,1,8,8")
    _assert_user_error(run(*args), "module '1' (Gate)", "--leaf")
    assert run(*args, "--leaf", "Gate").exit_code == 0


def test_inspect_with_label_free_data_says_how_it_will_score(tmp_path, model_files):
    np.savez(tmp_path / "free.npz", x=np.zeros((9, 1, 28, 28), np.float32))
    result = run("inspect", model_files["pt2"], "--data", tmp_path / "free.npz")
    assert result.exit_code == 0, result.output
    assert "has no labels: transformed models are scored by agreement" in result.output
