"""Tuning's packages come with the sparsify-cnn[tune] extra: without them, compiling works and
asking for tuning fails in one line that names the extra."""

import sys

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from sparsify_cnn.cli.main import cli
from sparsify_cnn.codegen.compile import TOLERANCE, compile_graph
from sparsify_cnn.errors import MissingExtraError
from sparsify_cnn.transform.capture import capture

pytestmark = pytest.mark.tvm  # compiles with TVM: `pytest -m 'not tvm'` leaves it out

MESSAGE = "tuning (--tune-trials) needs packages not installed here ({}): pip install 'sparsify-cnn[tune]'"


@pytest.fixture
def without_tune_extra(monkeypatch):
    """As in a plain install: xgboost and psutil cannot be imported (None in sys.modules)."""
    for name in ("xgboost", "psutil"):
        monkeypatch.setitem(sys.modules, name, None)


def _conv():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU()).eval()
    return model, capture(model, (1, 4, 8, 8)).graph_module


def test_tuning_names_the_missing_packages_and_the_extra(without_tune_extra, tmp_path):
    _, gm = _conv()
    with pytest.raises(MissingExtraError) as error:
        compile_graph(gm, (1, 4, 8, 8), tmp_path / "a", tune_trials=2, records=tmp_path / "records")
    assert str(error.value) == MESSAGE.format("xgboost, psutil")
    assert not (tmp_path / "a" / "model.so").exists()


def test_compiling_and_reusing_records_need_no_extra(without_tune_extra, tmp_path):
    model, gm = _conv()
    x = torch.randn(2, 4, 8, 8)
    plain = compile_graph(gm, (1, 4, 8, 8), tmp_path / "plain", check_inputs=x)
    reused = compile_graph(gm, (1, 4, 8, 8), tmp_path / "reused", check_inputs=x, records=tmp_path / "records")
    assert plain.relative_diff <= TOLERANCE and reused.relative_diff <= TOLERANCE


def test_the_cli_says_it_in_one_line(without_tune_extra, tmp_path):
    result = CliRunner().invoke(cli, ["compile", "zoo:lenet", "--tune-trials", "2", "--out", str(tmp_path / "a")])
    assert result.exit_code == MissingExtraError.exit_code
    assert result.output.splitlines()[-1] == "error: " + MESSAGE.format("xgboost, psutil")
    assert "Traceback" not in result.output


def test_bench_with_tuning_stops_before_timing_anything(without_tune_extra):
    result = CliRunner().invoke(cli, ["bench", "zoo:lenet", "--tune-trials", "2", "--batch", "1"])
    assert result.exit_code == MissingExtraError.exit_code
    assert result.output.strip() == "error: " + MESSAGE.format("xgboost, psutil")
