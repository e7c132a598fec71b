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
        (["m", "--finetune-lr", "0", "--out", "o"], ["'--finetune-lr': must be > 0, got 0"]),
        (["m", "--seed", "-1", "--out", "o"], ["'--seed': must be in 0..4294967295, got -1"]),
        (["m", "--technique", "ssc", "--target-params", "0", "--out", "o"], ["'--target-params': must be in (0, 1]"]),
        (["m", "--technique", "ssc", "--out", "o"], ["exactly one of --preset, --target-params, --ssc-layer (got none)",
                                                    "(see 'sparsify optimize --help')"]),  # fmt: skip
        (["train", "m", "--lr", "-inf", "--out", "o"], ["'--lr': must be a finite number > 0, got -inf"]),
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
