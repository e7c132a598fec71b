"""Outputs that cannot be written: found before any work when the folder is the problem, one
error line (exit 2) when a write fails at the end, and the previous files kept whole."""

import errno
import json

import pytest
import torch
from click.testing import CliRunner

from sparsify_cnn import storage
from sparsify_cnn.cli.main import cli

COMMANDS = {
    "optimize": (["optimize", "zoo:lenet", "--target", "none"], "--out", "out"),
    "compile": (["compile", "zoo:lenet"], "--out", "artifact"),
    "train": (["train", "zoo:lenet", "--epochs", "1"], "--out", "lenet.pt2"),
    "bench": (["bench", "zoo:lenet", "--backends", "eager"], "--json", "bench.json"),
    "tune-hparams": (["tune-hparams", "zoo:lenet", "--preset", "lenet", "--trials", "1"], "--out", "best.json"),
}


def _one_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()  # progress lines of the work done may come first
    assert [line for line in lines if "error" in line.lower()] == lines[-1:], result.output
    assert lines[-1].startswith("error: ") and "Traceback" not in result.output, result.output
    return lines[-1]


def _fail_if_called(*args, **kwargs):
    raise AssertionError("work started although the output cannot be written")


@pytest.mark.parametrize("name", list(COMMANDS))
@pytest.mark.parametrize("where", ["under a file", "/proc"])
def test_an_unwritable_out_stops_every_command_before_any_work(tmp_path, monkeypatch, name, where):
    command, option, leaf = COMMANDS[name]
    (tmp_path / "file").write_text("a regular file, where a folder would have to be")
    parent = tmp_path / "file" if where == "under a file" else "/proc/self/sparsify-test"
    monkeypatch.setattr("sparsify_cnn.pipeline.prepare", _fail_if_called)
    monkeypatch.setattr("sparsify_cnn.data.load_data", _fail_if_called)
    extra = ["--storage", str(tmp_path / "h.db")] if name == "tune-hparams" else []
    line = _one_error(CliRunner().invoke(cli, [*command, *extra, option, f"{parent}/{leaf}"]))
    assert ("cannot write in" in line or "exists and is not a folder" in line) and str(parent) in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_run_that_fails_leaves_no_empty_output_folder(tmp_path):
    out = tmp_path / "new" / "out"
    line = _one_error(CliRunner().invoke(cli, ["optimize", str(tmp_path / "missing.pt2"), "--out", str(out)]))
    assert "missing.pt2" in line
    assert not (tmp_path / "new").exists()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An output folder of a finished tiny job (its checkpoint makes a rerun fast)."""
    out = tmp_path_factory.mktemp("finished") / "out"
    args = ["zoo:lenet", "--data", "digits", "--mode", "uniform_layer", "--target", "none", "--no-crossover"]
    torch.manual_seed(0)  # an untrained zoo model's weights come from the global generator
    result = CliRunner().invoke(cli, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return args, out


def test_a_full_disk_at_the_end_is_one_line_and_keeps_the_previous_plan(finished, monkeypatch):
    args, out = finished
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    fsync = storage._fsync

    def full_disk(path):
        if "plan" in path.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(path)

    monkeypatch.setattr(storage, "_fsync", full_disk)
    torch.manual_seed(0)  # the same weights: the search resumes from its checkpoint, up to the plan
    line = _one_error(CliRunner().invoke(cli, [*args, "--out", str(out)]))
    assert line == f"error: cannot write '{out / 'plan.json'}': No space left on device"
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before  # the previous plan whole; no temporary file, no lock left behind
    assert json.loads(after["plan.json"])["technique"] == "spatial"


def test_a_model_written_to_a_full_device_is_one_line_not_an_abort(tmp_path):
    # torch's own writer would abort the process (SIGABRT) on ENOSPC; /dev/full is written in place
    result = CliRunner().invoke(cli, ["train", "zoo:lenet", "--epochs", "1", "--out", "/dev/full"])
    assert _one_error(result) == "error: cannot write '/dev/full': No space left on device"
