import json
import math

import pytest
import torch
from torch import nn

from sparsify_cnn.codegen import measure
from sparsify_cnn.codegen.measure import TimingCache, cache_key, measure_ms, signature
from sparsify_cnn.errors import InputError
from sparsify_cnn.techniques.perforation.op import PerforatedConv
from sparsify_cnn.transform.capture import capture

pytestmark = pytest.mark.tvm  # compiles with TVM: `pytest -m 'not tvm'` leaves it out

SHAPE = (1, 3, 8, 8)


def _perforated(kept_rows=slice(0, None, 2), interpolation="nearest", seed=0, name="conv") -> PerforatedConv:
    torch.manual_seed(seed)  # different weights for different seeds
    op = PerforatedConv(nn.Conv2d(3, 4, 3, padding=1), (8, 8), interpolation, layer_name=name)
    kept = torch.zeros(8, 8, dtype=torch.bool)
    kept[kept_rows] = True
    op.set_kept(kept)
    return op


def test_measure_ms_times_dense_and_perforated_convs():
    for module in (nn.Conv2d(3, 4, 3, padding=1), _perforated()):
        module.train()
        ms = measure_ms(module, SHAPE, number=1, repeat=2)
        assert math.isfinite(ms) and ms > 0
        assert module.training  # a search may be fine-tuning the module it times


def test_timing_a_wrapper_leaves_the_layers_it_shares_with_a_model_in_their_mode():
    """The crossover times a layer's dense block, built on the model's own conv and batch norm;
    the block starts in training mode. Timing it must not put the shared norm in training mode,
    or the model's next passes use batch statistics and overwrite its running ones."""
    conv, norm = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
    model = nn.Sequential(conv, norm, nn.ReLU()).eval()
    block = nn.Sequential(conv, norm)
    assert block.training
    measure_ms(block, SHAPE, number=1, repeat=1)
    assert block.training and not conv.training and not norm.training
    statistics = norm.running_mean.clone()
    with torch.no_grad():
        model(torch.randn(SHAPE) + 1.0)
    assert torch.equal(norm.running_mean, statistics)


@pytest.mark.parametrize("method", ["fx", "export"])
def test_measure_ms_times_a_captured_graph(method):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2)).eval()
    gm = capture(model, SHAPE, method=method).graph_module
    assert math.isfinite(measure_ms(gm, SHAPE, number=1, repeat=2))


@pytest.fixture
def counted_compiles(monkeypatch):
    calls = []
    real = measure.compile_module

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(measure, "compile_module", counting)
    return calls


def test_cache_hit_does_not_recompile(tmp_path, counted_compiles):
    path = tmp_path / "timings.json"
    cache = TimingCache(path)
    first = cache.get_or_measure(_perforated(), SHAPE)
    assert len(counted_compiles) == 1 and (cache.hits, cache.misses) == (0, 1)
    # Another module of the same layer, rate and mask (other weights, other name): a hit.
    again = cache.get_or_measure(_perforated(seed=1, name="other"), SHAPE)
    assert again == first and len(counted_compiles) == 1 and cache.hits == 1
    # The file keeps it for the next search.
    reopened = TimingCache(path)
    assert reopened.get_or_measure(_perforated(), SHAPE) == first and len(counted_compiles) == 1
    entry = json.loads(path.read_text())["timings"][cache_key(signature(_perforated(), SHAPE))]
    assert entry["ms"] == first and entry["signature"]["kind"] == "perforation"
    # Another mask is another timing.
    cache.get_or_measure(_perforated(kept_rows=slice(0, 2)), SHAPE)
    assert len(counted_compiles) == 2 and cache.misses == 2


def test_key_follows_what_decides_the_time():
    base = cache_key(signature(_perforated(), SHAPE))
    assert cache_key(signature(_perforated(seed=3, name="elsewhere"), SHAPE)) == base  # weights, names: no
    changed = [
        signature(_perforated(kept_rows=slice(1, None, 2)), SHAPE),  # same count, other positions
        signature(_perforated(interpolation="barycentric"), SHAPE),
        signature(_perforated(), (2, 3, 8, 8)),
        signature(_perforated(), SHAPE, tune_trials=8),
        signature(_perforated(), SHAPE, target="llvm:skylake-avx512"),
        signature(nn.Conv2d(3, 4, 3, padding=1), SHAPE),
        signature(nn.Conv2d(3, 4, 3, padding=1, stride=2), SHAPE),
    ]
    keys = [cache_key(s) for s in changed]
    assert base not in keys and len(set(keys)) == len(keys)


def test_a_file_that_is_not_a_cache_is_refused(tmp_path):
    path = tmp_path / "timings.json"
    path.write_text("[1, 2]")
    with pytest.raises(InputError, match="not a timing cache"):
        TimingCache(path)
