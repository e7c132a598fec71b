import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from sparsify_cnn.errors import InputError
from sparsify_cnn.passes.spatial import insert_spatial_ops
from sparsify_cnn.plan import Plan
from sparsify_cnn.search.checkpoint import Checkpoint
from sparsify_cnn.search.evaluator import Evaluator
from sparsify_cnn.search.spatial import SearchConfig, SpatialSearch
from sparsify_cnn.transform.capture import capture

CONFIG = SearchConfig(mode="uniform_patch", epsilon=0.01, top_m=2)


def _search(model, split, checkpoint=None, progress=None):
    gm = insert_spatial_ops(capture(model, (1, 1, 28, 28)).graph_module).graph_module
    return SpatialSearch(Evaluator(gm, split.x[:150], split.y[:150]), CONFIG, checkpoint, progress).run()


def test_interrupted_search_resumes_to_the_same_result(tmp_path, trained_lenet, digits28):
    reference = _search(trained_lenet, digits28.calib)
    path = tmp_path / "ckpt.json"
    calls = 0

    def interrupt(phase, item, *args, **extra):
        nonlocal calls
        calls += ": first level" in item  # after evaluations, so records exist
        if calls == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _search(trained_lenet, digits28.calib, Checkpoint(path, {"run": 1}), interrupt)
    saved = json.loads(path.read_text())["records"]
    assert saved  # what was done before Ctrl-C is on disk
    store = Checkpoint(path, {"run": 1})
    assert store.resumed == len(saved)
    resumed = _search(trained_lenet, digits28.calib, store)
    assert resumed.candidates < reference.candidates  # the records were reused, not recomputed
    assert resumed.masks.keys() == reference.masks.keys()
    for name in reference.masks:
        assert torch.equal(resumed.masks[name], reference.masks[name])
    assert (resumed.accuracy, resumed.macs_saved) == (reference.accuracy, reference.macs_saved)


def test_checkpoint_of_another_search_or_unreadable_is_refused(tmp_path):
    path = tmp_path / "ckpt.json"
    store = Checkpoint(path, {"model": "a"}, interval=0)
    store.put("k", [1.0, 2.0])
    assert json.loads(path.read_text())["records"] == {"k": [1.0, 2.0]}
    with pytest.raises(InputError, match="written by another search"):
        Checkpoint(path, {"model": "b"})
    path.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON.*remove it or pass --no-resume"):
        Checkpoint(path, {"model": "a"})


def test_killed_cli_search_resumes_to_the_same_plan(tmp_path, model_files):
    args = [sys.executable, "-m", "sparsify_cnn.cli", str(model_files["pt2"]), "--mode", "uniform_patch",
            "--top-m", "3", "--data", "digits", "--target", "none"]  # fmt: skip
    killed = tmp_path / "killed"
    process = subprocess.Popen([*args, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / "search-checkpoint.json"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, "the search ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "plan.json").exists()
    resumed = subprocess.run([*args, "--out", str(killed)], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    fresh = subprocess.run([*args, "--out", str(tmp_path / "fresh")], capture_output=True, text=True)
    assert fresh.returncode == 0, fresh.stderr
    a, b = Plan.load(killed / "plan.json"), Plan.load(tmp_path / "fresh" / "plan.json")
    assert a.masks.keys() == b.masks.keys() and all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert a.results == b.results
    resumed_records = json.loads((killed / "report.json").read_text())["search"]["checkpoint_records_resumed"]
    assert resumed_records > 0
