import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

from sparsify_cnn.techniques.spatial.evaluator import Evaluator, _max_pool_after, _pool_reach
from sparsify_cnn.techniques.spatial.op import diagonal, tile
from sparsify_cnn.techniques.spatial.rewrite import insert_spatial_ops
from sparsify_cnn.transform.capture import capture
from sparsify_cnn.transform.match import PoolingWindows


class Residual(nn.Module):
    """A residual block: the suffix of conv 'a' must read the skip tensor from the cache."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x):
        skip = torch.relu(self.stem(x))
        y = torch.relu(self.b(torch.relu(self.a(skip))) + skip)
        return self.head(y.flatten(1))


class Shuffle(Residual):
    """ShuffleNet's channel shuffle reads the batch size off a tensor (an int in the graph) and
    adds a value computed from weights alone: neither may be batched with the images."""

    def forward(self, x):
        skip = torch.relu(self.stem(x))
        n, c, h, w = skip.size()
        y = torch.relu(self.a(skip)).view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        y = torch.relu(self.b(y) + self.b.weight.sum())
        return self.head(torch.cat([y[:, :4], skip[:, 4:]], 1).view(n, -1))


class Pooled(Residual):
    """Convs that feed a max pool alone: the suffix starts after the pool, and images whose
    pooled map a mask leaves as it was keep their dense output."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8 * 2 * 2, 4)

    def forward(self, x):
        y = torch.max_pool2d(torch.relu(self.stem(x)), 2)
        y = nn.functional.max_pool2d(torch.relu(self.a(y)), 2)
        return self.head(torch.relu(self.b(y)).flatten(1))


class OddPools(Residual):
    """Max pools with padding and ceil mode (CQ's 3/2), and with dilation: where a box's change
    reaches a pool's output is worked out from its windows."""

    def __init__(self):
        super().__init__()
        self.pool = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)  # 8x8 -> 5x5
        self.head = nn.Linear(8 * 3 * 3, 4)

    def forward(self, x):
        y = self.pool(self.stem(x)).relu()
        y = nn.functional.max_pool2d(torch.relu(self.a(y)), 2, 1, 0, 2)  # dilation 2: 5x5 -> 3x3
        return self.head(torch.relu(self.b(y)).flatten(1))


@pytest.mark.parametrize(("method", "max_cache_bytes"), [("fx", None), ("export", None), ("fx", 210_000)])
@pytest.mark.parametrize("model_class", [Residual, Shuffle, Pooled, OddPools])
def test_suffix_evaluation_equals_the_whole_network(method, max_cache_bytes, model_class):
    """Also with a cache budget that splits Residual's and Shuffle's layers in two groups (40
    images x 2 KiB a map: 'a' and 'b' each need two maps, their own output and the skip, which
    is 'stem's output); Pooled's smaller maps all fit."""
    torch.manual_seed(0)
    model = model_class().eval()
    x = torch.randn(40, 1, 8, 8)
    target = model(x).argmax(1).roll(3)  # a target the model gets partly wrong
    gm = insert_spatial_ops(capture(model, (1, 1, 8, 8), method=method).graph_module).graph_module
    ev = Evaluator(gm, x, target, batch_size=16, max_cache_bytes=max_cache_bytes)
    assert ev.layer_names == ["stem", "a", "b"]
    assert len(ev.cache.groups) == (1 if max_cache_bytes is None or model_class in (Pooled, OddPools) else 2)
    if model_class in (Pooled, OddPools):  # modules, torch.max_pool2d and F.max_pool2d; aten.max_pool2d exported
        assert all(ev.layers[name].windows is not None for name in ("stem", "a"))
    generator = torch.Generator().manual_seed(1)
    for layer in ev.layer_names:
        op = ev.ops[layer]
        for mask in (tile(diagonal(2), *op.mask.shape, 2), torch.rand(op.mask.shape, generator=generator) > 0.6):
            alone = ev.evaluate_mask(layer, mask)
            whole = ev.evaluate_network({layer: mask})
            assert alone.accuracy == pytest.approx(whole.accuracy, abs=1e-9)
            assert alone.macs_saved == pytest.approx(whole.macs_saved)
    assert ev.suffix_images > 0 and ev.full_passes == 1 + 6


@pytest.mark.parametrize("model_class", [Residual, Shuffle, Pooled, OddPools])
def test_margin_gradients_through_suffixes_equal_the_whole_networks(model_class):
    """Oracle: the gradient of the margins with respect to an op's output, taken through the
    whole network (the output swapped for a leaf by a forward hook)."""
    torch.manual_seed(0)
    model = model_class().eval()
    x = torch.randn(20, 1, 8, 8)
    target = model(x).argmax(1).roll(3)
    gm = insert_spatial_ops(capture(model, (1, 1, 8, 8)).graph_module).graph_module
    ev = Evaluator(gm, x, target, batch_size=8)
    for layer in ev.layer_names:
        leaf = {}

        def swap(module, args, out):
            leaf["out"] = out.detach().requires_grad_(True)
            return leaf["out"]

        handle = ev.ops[layer].register_forward_hook(swap)
        try:
            logits = gm(x)
        finally:
            handle.remove()
        others = logits.detach().scatter(1, target[:, None], float("-inf")).argmax(1)
        margins = logits.gather(1, target[:, None]) - logits.gather(1, others[:, None])
        (expected,) = torch.autograd.grad(margins.sum(), leaf["out"])
        assert torch.allclose(ev.margin_gradient(layer), expected, atol=1e-5), layer
        assert torch.allclose(ev.dense_margins(), margins.detach().flatten(), atol=1e-5)


def test_unchanged_images_skip_the_suffix_and_bounds_hold(trained_lenet, digits28):
    gm = insert_spatial_ops(capture(trained_lenet, (1, 1, 28, 28)).graph_module).graph_module
    calib = digits28.calib
    ev = Evaluator(gm, calib.x, calib.y)
    nothing = ev.evaluate_mask("conv1", torch.ones_like(ev.ops["conv1"].mask))
    assert nothing.accuracy == ev.dense_accuracy and nothing.macs_saved == 0 and ev.suffix_images == 0
    one_channel = torch.ones_like(ev.ops["conv2"].mask)
    one_channel[7] = tile(diagonal(2), 1, 8, 8, 2)[0]
    candidate = ev.candidate("conv2", one_channel)
    outcome = ev.evaluate("conv2", [candidate])[0]
    assert 0 < ev.suffix_images == len(candidate.images) < len(calib)  # only images it mispredicts on
    assert outcome.accuracy <= ev.best_case_accuracy(candidate.images) + 1e-12


def test_only_a_max_pool_that_reads_the_op_alone_and_returns_values_starts_the_suffix():
    class Net(nn.Module):
        def __init__(self, pool):
            super().__init__()
            self.pool = pool

        def forward(self, x):
            return self.pool(torch.relu(x))

    def found(module):
        gm = torch.fx.symbolic_trace(module)
        relu = next(n for n in gm.graph.nodes if n.target is torch.relu)
        return _max_pool_after(gm, relu) is not None

    assert found(Net(nn.MaxPool2d(2)))
    assert not found(Net(nn.MaxPool2d(2, return_indices=True)))  # a tuple: nothing to compare
    assert not found(Net(nn.AvgPool2d(2)))  # every input moves an average

    class TwoReaders(nn.Module):
        def forward(self, x):
            y = torch.relu(x)
            return torch.max_pool2d(y, 2).sum() + y.sum()

    assert not found(TwoReaders())


@given(size=st.integers(1, 12), kernel=st.integers(1, 4), stride=st.integers(1, 3), dilation=st.integers(1, 2),
       padding=st.integers(0, 2), ceil_mode=st.booleans(), data=st.data())  # fmt: skip
def test_a_pool_recomputed_where_a_change_reaches_equals_the_whole_pool(size, kernel, stride, dilation, padding,
                                                                        ceil_mode, data):  # fmt: skip
    """``_pool_reach``: every pool output whose window reads the changed span (and those whose
    dilated taps step over it: the outputs from the first to the last window spanning it); the
    input they read, with the padding beyond the map, pooled alone gives those outputs."""
    assume(padding <= kernel // 2 and dilation * (kernel - 1) + 1 <= size + 2 * padding)
    start = data.draw(st.integers(0, size - 1))
    span = slice(start, data.draw(st.integers(start + 1, size)))
    windows = PoolingWindows((1, kernel), (1, stride), (0, padding), (1, dilation), ceil_mode)
    x = torch.randn(1, 1, 1, size)
    whole = nn.functional.max_pool2d(x, (1, kernel), (1, stride), (0, padding), (1, dilation), ceil_mode)
    changed = x.clone()
    changed[..., span] += 100.0  # every output reading the span moves
    moved = (nn.functional.max_pool2d(changed, (1, kernel), (1, stride), (0, padding), (1, dilation), ceil_mode)
             != whole).flatten().nonzero().flatten().tolist()  # fmt: skip
    outputs, inputs, pads = _pool_reach(windows, 1, span, size, whole.shape[-1])
    assert set(moved) <= set(range(outputs.start, outputs.stop))
    if dilation == 1:
        assert list(range(outputs.start, outputs.stop)) == moved
    if outputs.stop > outputs.start:
        window = nn.functional.pad(changed[..., inputs], pads, value=float("-inf"))
        alone = nn.functional.max_pool2d(window, (1, kernel), (1, stride), 0, (1, dilation))
        assert torch.equal(alone, nn.functional.max_pool2d(changed, (1, kernel), (1, stride), (0, padding),
                                                           (1, dilation), ceil_mode)[..., outputs])  # fmt: skip
