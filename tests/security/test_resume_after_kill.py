"""``kill -9`` mid-run, then the same command again: the outcome is the one of a run that was never
interrupted (the plan of a search, the weights of a fine-tune or of ``train``, the points a
``tune-hparams`` study draws). Each case polls for the checkpoint to appear, kills the process
with SIGKILL, checks it had not finished, reruns and compares with an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sparsify_cnn.cli.main import cli
from sparsify_cnn.model_io import load_model, save_program

# One thread: the same arithmetic in every run on a shared machine, and less contention.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _command(*args) -> list[str]:
    return [sys.executable, "-m", "sparsify_cnn", *map(str, args)]


def _run(args: list[str], cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


class _Background:
    """The uninterrupted run, beside the killed one (on two idle cores it costs no wall time)."""

    def __init__(self, args: list[str], cwd: Path):
        self.log = cwd / "straight.log"
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(args, cwd=cwd, env=ENV, stdout=out, stderr=subprocess.STDOUT)

    def __enter__(self):
        return self

    def __exit__(self, *failed):
        try:
            code = self.process.wait(timeout=300)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        if not failed[0]:
            assert code == 0, self.log.read_text()


def _kill_when(args: list[str], cwd: Path, ready, timeout: float = 120) -> None:
    """Start ``args``, wait for ``ready()`` to hold, then SIGKILL it (no handler can run)."""
    log = cwd / f"killed-{time.monotonic_ns()}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(args, cwd=cwd, env=ENV, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if process.poll() is not None:
                pytest.fail(f"the run ended (exit {process.returncode}) before it could be killed:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no checkpoint after {timeout} s:\n{log.read_text()}")
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_model(str(path)).module.state_dict()


def _same_weights(a: Path, b: Path) -> None:
    first, second = _weights(a), _weights(b)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def _has_records(path: Path):
    def ready() -> bool:
        try:
            return bool(json.loads(path.read_text())["records"])
        except (OSError, ValueError, KeyError):
            return False

    return ready


@pytest.fixture(scope="module")
def lenet_file(tmp_path_factory, trained_lenet):
    path = tmp_path_factory.mktemp("model") / "lenet.pt2"
    save_program(trained_lenet, (1, 28, 28), path, {"zoo": "lenet"})
    return path


def test_a_killed_search_resumes_to_the_same_plan(tmp_path, lenet_file):
    # Spatial search of one layer: a few seconds, so the checkpoint (flushed every 2 s) fills mid-search.
    job = [lenet_file, "--layers", "conv2", "--target", "none", "--no-crossover", "--data", "digits"]
    out = tmp_path / "killed"
    with _Background(_command(*job, "--out", tmp_path / "straight"), tmp_path):
        _kill_when(_command(*job, "--out", out), tmp_path, _has_records(out / "search-checkpoint.json"))
        assert not (out / "plan.json").exists()
        _run(_command(*job, "--out", out), tmp_path)
    assert json.loads((out / "report.json").read_text())["search"]["checkpoint_records_resumed"] > 0
    assert json.loads((out / "plan.json").read_text()) == json.loads((tmp_path / "straight" / "plan.json").read_text())


def test_a_killed_finetune_resumes_to_the_same_weights(tmp_path, lenet_file):
    job = [lenet_file, "--technique", "perforation", "--mask", "uniform", "--speedup", "1.5",
           "--finetune-epochs", "2", "--target", "none", "--no-crossover", "--data", "digits"]  # fmt: skip
    out = tmp_path / "killed"
    with _Background(_command(*job, "--out", tmp_path / "straight"), tmp_path):
        _kill_when(_command(*job, "--out", out), tmp_path, (out / "finetune-checkpoint.pt").exists)
        assert not (out / "plan.json").exists()
        _run(_command(*job, "--out", out), tmp_path)
    assert json.loads((out / "report.json").read_text())["finetune"]["resumed_from"] == 1
    assert json.loads((out / "plan.json").read_text()) == json.loads((tmp_path / "straight" / "plan.json").read_text())
    _same_weights(out / "model.pt2", tmp_path / "straight" / "model.pt2")


def test_a_killed_train_resumes_to_the_same_weights(tmp_path):
    job = ["train", "zoo:lenet", "--data", "digits", "--epochs", "3"]
    out = tmp_path / "killed.pt2"
    checkpoint = tmp_path / "killed.pt2.ckpt"  # the default: beside --out
    with _Background(_command(*job, "--out", tmp_path / "straight.pt2"), tmp_path):
        _kill_when(_command(*job, "--out", out), tmp_path, checkpoint.exists)
        assert not out.exists() and checkpoint.exists()
        assert "resumed from" in _run(_command(*job, "--out", out), tmp_path)
    _same_weights(out, tmp_path / "straight.pt2")
    assert not checkpoint.exists()  # the model is saved: nothing left to resume


def _trial_count(db: Path, at_least: int):
    def ready() -> bool:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as connection:
                (count,) = connection.execute(
                    "SELECT count(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')"
                ).fetchone()
            return count >= at_least
        except sqlite3.Error:  # not created yet, or locked
            return False

    return ready


def _history(db: Path) -> list[tuple]:
    import optuna

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    return [(t.params, t.state.name, t.intermediate_values, t.value) for t in study.get_trials()
            if t.state.name != "FAIL"]  # fmt: skip


def test_a_killed_study_resumes_drawing_the_same_points(tmp_path):
    # A tiny data set: trials take a fraction of a second, so the kill lands a few trials in.
    rng = np.random.default_rng(0)
    y = np.arange(90) % 3
    x = rng.random((90, 1, 28, 28), dtype=np.float32) * 0.2
    for i, label in enumerate(y):
        x[i, 0, 4 + 7 * label : 10 + 7 * label, 8:20] += 0.8
    np.savez(tmp_path / "tiny.npz", x=x, y=y)
    job = ["tune-hparams", "zoo:lenet", "--preset", "lenet", "--data", tmp_path / "tiny.npz", "--seed", "3",
           "--trials", "12", "--max-epochs", "3", "--study", "tiny"]  # fmt: skip
    # (a fixed study name: Hyperband's brackets hash it, and the default one holds the data's path)
    db = tmp_path / "killed.db"
    command = _command(*job, "--storage", db, "--out", tmp_path / "killed.json")
    with _Background(_command(*job, "--storage", tmp_path / "straight.db", "--out", tmp_path / "straight.json"),
                     tmp_path):  # fmt: skip
        _kill_when(command, tmp_path, _trial_count(db, 2))
        assert not (tmp_path / "killed.json").exists()
        _run(command, tmp_path)
    straight = _history(tmp_path / "straight.db")
    assert "PRUNED" in {state for _, state, _, _ in straight}  # Hyperband had a say
    assert _history(db) == straight
    best, straight = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("killed", "straight"))
    assert best["setup"] == straight["setup"] and best["tuned"]["values"] == straight["tuned"]["values"]


def test_a_checkpoint_of_another_run_or_a_broken_one_is_refused_in_one_line(tmp_path):
    out, checkpoint = tmp_path / "m.pt2", tmp_path / "m.pt2.ckpt"
    job = ["train", "zoo:lenet", "--data", "digits", "--epochs", "1", "--batch-size", "256", "--out", str(out)]
    checkpoint.write_bytes(b"PK\x03\x04 truncated")
    refused = CliRunner().invoke(cli, job)
    assert refused.exit_code == 2 and refused.output.count("error:") == 1, refused.output
    assert "unreadable" in refused.output and "--no-resume" in refused.output and not out.exists()

    torch.save({"identity": {"config": {}}, "model": {"w": torch.zeros(1)}}, checkpoint)  # another run's
    refused = CliRunner().invoke(cli, job)
    assert refused.exit_code == 2 and "written by another run" in refused.output and "--no-resume" in refused.output

    started_over = CliRunner().invoke(cli, [*job, "--no-resume"])
    assert started_over.exit_code == 0, started_over.output
    assert out.exists() and not checkpoint.exists()
