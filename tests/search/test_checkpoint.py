import json

import pytest
import torch

from sparsify_cnn.errors import InputError
from sparsify_cnn.search.checkpoint import Checkpoint
from sparsify_cnn.techniques.spatial.evaluator import Evaluator
from sparsify_cnn.techniques.spatial.rewrite import insert_spatial_ops
from sparsify_cnn.techniques.spatial.search import SearchConfig, SpatialSearch
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


def test_a_checkpoint_from_before_an_option_existed_resumes_only_with_that_option_off(tmp_path):
    path = tmp_path / "ckpt.json"
    Checkpoint(path, {"search": {"mode": "uniform_filter"}}, interval=0).put("k", [1.0, 2.0])
    resumed = Checkpoint(path, {"search": {"mode": "uniform_filter", "max_risk": None}})
    assert resumed.records == {"k": [1.0, 2.0]}
    for other in ({"search": {"mode": "uniform_filter", "max_risk": 0.01}}, {"search": {"mode": "uniform_patch"}},
                  {"search": {}}, {"search": {"mode": "uniform_filter"}, "metric": None, "data": "x"}):  # fmt: skip
        with pytest.raises(InputError, match="written by another search"):
            Checkpoint(path, other)
