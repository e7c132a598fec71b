import json

import pytest
from click.testing import CliRunner

from sparsify_cnn.cli.main import cli

pytestmark = pytest.mark.tvm  # compiles with TVM: `pytest -m 'not tvm'` leaves it out

FAST = ("--rounds", "1", "--number", "1", "--backends", "eager,tvm")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_bench_of_a_model_prints_the_table_and_writes_json(tmp_path, model_files):
    out = tmp_path / "b.json"
    result = run("bench", model_files["pt2"], "--data", "digits", "--batch", "1,2", "--baseline", "eager", *FAST,
                 "--json", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "measured vs eager" in result.output and "| model | lenet.pt2 | dense | 2 |" in result.output
    data = json.loads(out.read_text())
    assert [e["batch"] for e in data["entries"]] == [1, 2]
    assert data["config"]["baseline"] == "eager" and data["entries"][0]["dense"]["ms"]["tvm"] > 0


def test_bench_of_a_search_directory_times_the_plan_against_its_dense_model(tmp_path, model_files):
    out = tmp_path / "search"
    searched = run(model_files["pt2"], "--technique", "perforation", "--mask", "grid", "--speedup", "1.5",
                   "--data", "digits", "--target", "none", "--out", out)  # fmt: skip
    assert searched.exit_code == 0, searched.output
    result = run("bench", out, "--batch", "1", *FAST)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "bench.json").read_text())
    assert data["technique"] == "perforation"
    layers = [e for e in data["entries"] if e["scope"] == "layer"]
    assert layers and all(e["theoretical"] > 1 and e["transformed"]["ms"]["tvm"] > 0 for e in layers)
    assert "| layer | conv2 | perforation | 1 |" in result.output


def test_bench_refuses_bad_input_in_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("bench", empty)
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0
    assert "without plan.json" in result.output
    result = run("bench", "zoo:lenet", "--backends", "tvm", "--baseline", "eager")
    assert result.exit_code != 0 and "needs the eager backend" in result.output
    result = run("bench", "zoo:lenet", "--batch", "0")
    assert result.exit_code == 2 and "positive" in result.output
