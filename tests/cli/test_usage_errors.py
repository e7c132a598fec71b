"""click's usage errors in the tool's own form: ``error: <message> (see 'sparsify CMD --help')``,
one line on stderr, exit 2; other click errors as ``error: <message>`` with their exit code;
``--help`` and ``--version`` unchanged. Each fails before any model loads."""

from __future__ import annotations

from unittest import mock

import click
import pytest
from click.testing import CliRunner

from sparsify_cnn.cli.main import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error_line(result, *fragments, code=2):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and "Usage:" not in result.output and "Try " not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--bogus"], ["No such option '--bogus'", "(see 'sparsify --help')"]),
        (["model.pt2", "--bogus", "--out", "o"], ["No such option '--bogus'", "(see 'sparsify optimize --help')"]),
        (["optimize", "model.pt2", "--bogus"], ["No such option", "(see 'sparsify optimize --help')"]),
        (["optimize"], ["Missing argument 'MODEL'", "(see 'sparsify optimize --help')"]),
        (["model.pt2"], ["Missing option '--out'", "(see 'sparsify optimize --help')"]),
        (["model.pt2", "--mode", "x", "--out", "o"], ["Invalid value for '--mode': 'x' is not one of"]),
        (["bench", "m", "--rounds", "0"], ["'--rounds': must be in 1..1000000, got 0", "'sparsify bench --help'"]),
        (["bench", "m", "--number", "-3"], ["'--number': must be in 1..1000000, got -3"]),
        (["compile", "m", "--check-images", "-1", "--out", "o"], ["'--check-images': must be in 0..65536"]),
        (["compile", "m", "--tune-trials", "-1", "--out", "o"], ["'--tune-trials': must be in 0..1000000"]),
        (["m", "--speedup", "inf", "--out", "o"], ["'--speedup': must be a finite number > 1, got inf"]),
        (["m", "--speedup", "1", "--out", "o"], ["'--speedup': must be > 1, got 1"]),
        (["m", "--epsilon", "nan", "--out", "o"], ["'--epsilon': must be a finite number in [0, 1), got nan"]),
        (["m", "--finetune-epochs", "-3", "--out", "o"], ["'--finetune-epochs': must be in 0..1000000, got -3"]),
        (["m", "--finetune-lr", "0", "--out", "o"], ["'--finetune-lr': must be in (0, 1e+38], got 0"]),
        (["m", "--seed", "-1", "--out", "o"], ["'--seed': must be in 0..4294967295, got -1"]),
        (["m", "--technique", "ssc", "--target-params", "0", "--out", "o"], ["'--target-params': must be in (0, 1]"]),
        (["m", "--technique", "ssc", "--out", "o"], ["exactly one of --preset, --target-params, --ssc-layer (got none)",
                                                    "(see 'sparsify optimize --help')"]),  # fmt: skip
        (["train", "m", "--lr", "-inf", "--out", "o"], ["'--lr': must be a finite number in (0, 1e+38], got -inf"]),
        # Above float32's range torch's optimizers crashed converting them (a traceback, not one line).
        (["m", "--finetune-lr", "1e308", "--out", "o"], ["'--finetune-lr': must be in (0, 1e+38], got 1e+308"]),
        (["train", "m", "--weight-decay", "1e300", "--out", "o"], ["'--weight-decay': must be in [0, 1e+38], got 1e+300"]),
        (["train", "m", "--coverage", "1", "--out", "o"], ["'--coverage': must be in (0, 1), got 1"]),
        (["train", "m", "--max-entry-memory", "0", "--out", "o"], ["'--max-entry-memory': '0' must be at least 1 byte"]),
        (["tune-hparams", "zoo:cq"], ["Missing option '--preset'", "(see 'sparsify tune-hparams --help')"]),
        (["tune-hparams", "zoo:cq", "--preset", "cq", "--reduction-factor", "1"], ["must be in 2..1000, got 1"]),
        (["zoo", "extra"], ["unexpected extra argument (extra)", "(see 'sparsify zoo --help')"]),
        (["run", "a"], ["Missing option '--input'", "(see 'sparsify run --help')"]),
        (["m", "--input-shape", "100000,3,1000,1000", "--out", "o"], ["values per batch; at most 1,073,741,824"]),
        (["compile", "m", "--target", "none", "--out", "o"], ["'--target': 'none' is not llvm, llvm:CPU or cuda:sm_XX"]),
        (["bench", "m", "--target", "cuda:sm_9"], ["'--target': 'cuda:sm_9' is not llvm"]),
    ],
)
def test_usage_errors_are_one_line(args, fragments):
    one_error_line(run(*args), *fragments)


def test_target_params_zero_is_named_not_none():
    line = one_error_line(run("m", "--technique", "ssc", "--target-params", "0", "--out", "o"))
    assert "(got none)" not in line


def test_click_exception_from_a_command_is_one_line_with_its_exit_code():
    def interrupted(**_):
        raise click.ClickException("interrupted: the search checkpoint is saved")

    with mock.patch.object(cli.commands["zoo"], "callback", interrupted):
        one_error_line(run("zoo"), "error: interrupted: the search checkpoint is saved", code=1)


def test_help_and_version_unchanged():
    for args in (["--help"], ["optimize", "--help"], ["bench", "-h"]):
        result = run(*args)
        assert result.exit_code == 0 and result.output.startswith("Usage: sparsify") and not result.stderr
    result = run("--version")
    assert result.exit_code == 0 and result.output.startswith("sparsify, version ")


def test_terminal_escapes_in_an_echoed_value_are_shown_escaped():
    line = one_error_line(run("m", "--ones-range", "\x1b[2J1-x", "--out", "o"))
    assert "\x1b" not in line and "\\x1b[2J1-x" in line
    result = run("inspect", "zoo:lenet", "--data", "/nonexistent/\x1b[31m.npz")
    assert result.exit_code == 2 and "\x1b" not in result.output and "\\x1b[31m.npz" in result.output


def test_a_newline_in_a_file_name_keeps_the_error_one_line(tmp_path):
    line = one_error_line(run("inspect", tmp_path / "a\nb.pt2"), "does not exist")
    assert "a\\nb.pt2" in line


def test_ctrl_c_in_any_command_is_one_line_interrupted_with_exit_1():
    def interrupted(**_):
        raise KeyboardInterrupt

    with mock.patch.object(cli.commands["zoo"], "callback", interrupted):
        one_error_line(run("zoo"), "error: interrupted", code=1)


def test_a_refused_pickle_shows_no_torch_warning(tmp_path):
    import pickle
    import subprocess
    import sys

    path = tmp_path / "obj.pt"
    path.write_bytes(pickle.dumps({"x": object()}, protocol=4))  # torch warns of any protocol but 2
    # In a process of its own: pytest records warnings rather than printing them.
    done = subprocess.run([sys.executable, "-m", "sparsify_cnn", "inspect", str(path)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: ") and "is a pickled Python object" in done.stderr


def test_train_refuses_a_torch_export_program_in_one_line(tmp_path):
    from sparsify_cnn.model_io import save_program
    from sparsify_cnn.models import build

    save_program(build("zoo:lenet").eval(), (1, 28, 28), tmp_path / "m.pt2")
    result = run("train", tmp_path / "m.pt2", "--epochs", "1", "--out", tmp_path / "o.pt2")
    one_error_line(result, "is a torch.export program, which torch cannot train")
    assert not (tmp_path / "o.pt2").exists()


def test_images_too_small_for_a_zoo_model_are_one_line(tmp_path):
    """Channels-last images read as N,C,H,W: 28 channels of 28 x 1, too narrow for LeNet's layers."""
    import numpy as np

    np.savez(tmp_path / "hwc.npz", x=np.zeros((12, 28, 28, 1), np.float32), y=np.arange(12) % 2)
    one_error_line(run("inspect", "zoo:lenet", "--data", tmp_path / "hwc.npz"), "lenet cannot be built for input 28 x 28 x 1")


@pytest.mark.parametrize(
    "args",
    [
        ["zoo:lenet", "--target", "none", "--out", ""],  # wrote the whole job into the current folder
        ["compile", "zoo:lenet", "--out", ""],
        ["train", "zoo:lenet", "--out", ""],
        ["inspect", "zoo:lenet", "--json", ""],  # skipped the JSON silently, exit 0
    ],
)
def test_an_empty_output_path_is_refused_before_any_work(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_error_line(run(*args), "is empty: give the path to write")
    assert list(tmp_path.iterdir()) == []


def test_a_pickled_object_as_training_checkpoint_shows_no_torch_warning(tmp_path):
    import pickle
    import subprocess
    import sys

    path = tmp_path / "o.pt2.ckpt"
    path.write_bytes(pickle.dumps({"x": object()}, protocol=4))
    code = ("import sys\nfrom pathlib import Path\nfrom sparsify_cnn.training import load_checkpoint\n"
            "try:\n    load_checkpoint(Path(sys.argv[1]), {}, 'training checkpoint')\n"
            "except Exception as error:\n    print('error:', error, file=sys.stderr)\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300)
    assert done.stderr.count("\n") == 1 and "is unreadable (UnpicklingError)" in done.stderr, done.stderr


def test_a_fifo_as_training_config_is_refused_not_waited_on(tmp_path):
    import os

    os.mkfifo(tmp_path / "config.json")  # reading it blocked forever
    one_error_line(run("train", "zoo:lenet", "--config", tmp_path / "config.json", "--out", tmp_path / "o.pt2"),
                   "not a regular file")  # fmt: skip


def test_a_full_standard_output_is_one_error_line():
    import subprocess
    import sys

    with open("/dev/full", "w") as full:  # a device opened for writing, never replaced
        done = subprocess.run([sys.executable, "-m", "sparsify_cnn", "zoo"], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == "error: cannot write the command's output: No space left on device\n"
