"""Two runs on one --out: the second stops in one line naming the first; a killed holder frees it."""

import os
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from sparsify_cnn import storage
from sparsify_cnn.cli.main import cli

HOLD = """
import sys, time
from sparsify_cnn.storage import output_lock
with output_lock(sys.argv[1], inside=sys.argv[2] == "inside"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder():
    """Start a process that holds the lock of an output; yields a function taking (path, inside)."""
    processes = []

    def hold(path, inside=True):
        process = subprocess.Popen([sys.executable, "-c", HOLD, str(path), "inside" if inside else "sibling"],
                                   stdout=subprocess.PIPE, text=True)  # fmt: skip
        processes.append(process)
        assert process.stdout.readline().strip() == "held"
        return process

    yield hold
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def _refused(result, pid: int, option: str = "--out"):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert f"being written by another sparsify run (pid {pid}, started " in lines[0]
    assert lines[0].endswith(f"wait for it to finish or choose another {option}")


def _fail_if_called(*args, **kwargs):
    raise AssertionError("work started although the output is locked")


@pytest.mark.parametrize("command, out_name, inside", [
    (["optimize", "zoo:lenet", "--target", "none"], "out", True),
    (["compile", "zoo:lenet", "--target", "llvm"], "artifact", False),
    (["train", "zoo:lenet", "--epochs", "1"], "lenet.pt2", False),
    (["bench", "zoo:lenet", "--backends", "eager"], "bench.json", False),
    (["tune-hparams", "zoo:lenet", "--preset", "lenet", "--trials", "1"], "best.json", False),
])  # fmt: skip
def test_a_second_run_on_a_locked_output_stops_before_any_work(tmp_path, holder, monkeypatch, command, out_name,
                                                                inside):
    out = tmp_path / out_name
    if inside:
        out.mkdir()
    first = holder(out, inside)
    monkeypatch.setattr("sparsify_cnn.pipeline.prepare", _fail_if_called)
    monkeypatch.setattr("sparsify_cnn.data.load_data", _fail_if_called)
    option = "--json" if command[0] == "bench" else "--out"
    extra = ["--storage", str(tmp_path / "h.db")] if command[0] == "tune-hparams" else []
    result = CliRunner().invoke(cli, [*command, *extra, option, str(out)])
    _refused(result, first.pid, option)
    assert not (tmp_path / "h.db").exists()


def test_a_real_second_process_is_refused_and_a_killed_holder_frees_the_output(tmp_path, holder):
    out = tmp_path / "out"
    out.mkdir()
    first = holder(out)
    second = subprocess.run([sys.executable, "-m", "sparsify_cnn.cli", "zoo:lenet", "--data", "digits", "--target",
                             "none", "--out", str(out)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert second.returncode == 2, second.stderr
    assert second.stderr.strip().splitlines() == [second.stderr.strip()]
    assert f"error: '{out}' is being written by another sparsify run (pid {first.pid}, " in second.stderr
    assert [p.name for p in out.iterdir()] == [".sparsify.lock"]  # the holder's, untouched
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    with storage.output_lock(out) as lock:  # the kernel released it with the process
        assert lock.read_text().startswith(f"{os.getpid()} ")
    assert list(out.iterdir()) == []


def test_an_artifact_folder_never_holds_the_lock(tmp_path, holder):
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    holder(artifact, inside=False)
    assert list(artifact.iterdir()) == [] and (tmp_path / ".artifact.lock").exists()
