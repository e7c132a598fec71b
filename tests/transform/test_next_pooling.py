import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsify_cnn import models
from sparsify_cnn.transform.capture import capture
from sparsify_cnn.transform.layers import find_layers
from sparsify_cnn.transform.match import PoolingWindows, find_next_pooling

CAFFE_POOL = PoolingWindows((3, 3), (2, 2), (0, 0), (1, 1), True)  # 3/2, rounding up
ALEX_POOL = PoolingWindows((3, 3), (2, 2), (0, 0))
HALVING = PoolingWindows((2, 2), (2, 2), (0, 0))

# Zoo models: every conv that reaches a pool; all the others must give None.
ZOO = {
    "lenet": ((1, 28, 28), {"conv1": PoolingWindows((2, 2), (2, 2), (0, 0), (1, 1), True),
                            "conv2": PoolingWindows((2, 2), (2, 2), (0, 0), (1, 1), True)}),
    "cq": ((3, 32, 32), {"conv1": CAFFE_POOL, "conv2": CAFFE_POOL, "conv3": CAFFE_POOL}),
    # NIN: through the two 1x1 convs of each mlpconv block; conv3 ends in a global 8x8 pool.
    "nin": ((3, 32, 32), {"conv1": CAFFE_POOL, "cccp1": CAFFE_POOL, "cccp2": CAFFE_POOL,
                          "conv2": CAFFE_POOL, "cccp3": CAFFE_POOL, "cccp4": CAFFE_POOL,
                          "conv3": PoolingWindows((8, 8), (8, 8), (0, 0)),
                          "cccp5": PoolingWindows((8, 8), (8, 8), (0, 0)),
                          "cccp6": PoolingWindows((8, 8), (8, 8), (0, 0))}),
    "alexnet": ((3, 64, 64), {"features.0": ALEX_POOL, "features.3": ALEX_POOL, "features.10": ALEX_POOL}),
    "vgg16": ((3, 32, 32), {"features.3": HALVING, "features.10": HALVING, "features.20": HALVING,
                            "features.30": HALVING, "features.40": HALVING}),  # .40: the 2x2 average pool
    # ResNet: the stem's padded max pool, and the last block's add -> ReLU -> global pool (2x2 map).
    "resnet18": ((3, 64, 64), {"conv1": PoolingWindows((3, 3), (2, 2), (1, 1)), "layer4.1.conv2": HALVING}),
}  # fmt: skip


@pytest.fixture(scope="module")
def captured():
    """Zoo graphs by (name, capture method), made once for this file."""
    cache = {}

    def get(name: str, method: str):
        if (name, method) not in cache:
            torch.manual_seed(0)
            model = models.build(name)
            cache[name, method] = capture(
                model, (1, *ZOO[name][0]), method=method
            ).graph_module
        return cache[name, method]

    yield get
    cache.clear()


def _all_convs(gm) -> dict:
    convs = [layer for layer in find_layers(gm) if layer.kind == "conv"]
    return {layer.name: find_next_pooling(gm, layer.node) for layer in convs}


@pytest.mark.parametrize("method", ["fx", "export"])
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_models(captured, name, method):
    found = _all_convs(captured(name, method))
    assert {k: v for k, v in found.items() if v is not None} == ZOO[name][1]


def test_convs_with_no_pool_after_them(captured):
    alexnet = _all_convs(captured("alexnet", "export"))
    # The next op is a 3x3 conv.
    assert alexnet["features.6"] is None and alexnet["features.8"] is None
    resnet = _all_convs(captured("resnet18", "fx"))
    assert resnet["layer1.0.conv1"] is None
    # Its ReLU feeds the next block twice (conv and identity).
    assert resnet["layer4.0.conv2"] is None
    assert resnet["layer4.0.downsample.0"] is None


def test_windows_unpack_as_kernel_stride_padding(captured):
    gm = captured("resnet18", "fx")
    stem = next(layer.node for layer in find_layers(gm) if layer.name == "conv1")
    kernel, stride, padding, *_ = find_next_pooling(gm, stem)
    assert (kernel, stride, padding) == ((3, 3), (2, 2), (1, 1))


class Net(nn.Module):
    """conv -> ``between`` -> ``pool``; a second conv ``b`` can join through a residual add."""

    def __init__(self, between, pool):
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.b = nn.Conv2d(2, 4, 3, padding=1)
        self.one = nn.Conv2d(4, 4, 1)
        self.one_strided = nn.Conv2d(4, 4, 1, stride=2)
        self.three = nn.Conv2d(4, 4, 3, padding=1)
        self.register_buffer("mean", torch.randn(4))
        self.register_buffer("var", torch.rand(4) + 0.5)
        self.between, self.pool = between, pool

    def forward(self, x):
        return self.pool(self.between(self, self.a(x), x))


CASES = {
    "functional max pool, padded and dilated": (
        lambda m, y, x: F.dropout(F.leaky_relu(y), 0.2, training=False),
        lambda y: F.max_pool2d(y, 3, stride=2, padding=1, dilation=2),
        PoolingWindows((3, 3), (2, 2), (1, 1), (2, 2), False),
    ),
    "batch norm, 1x1 conv, ceil-mode average pool": (
        lambda m, y, x: torch.sigmoid(m.one(F.batch_norm(y, m.mean, m.var, training=False))),
        lambda y: F.avg_pool2d(y, 2, ceil_mode=True),
        PoolingWindows((2, 2), (2, 2), (0, 0), (1, 1), True),
    ),
    "max pool with indices": (
        lambda m, y, x: (y * 2.0).relu(),
        lambda y: F.max_pool2d(y, 2, return_indices=True)[0],
        HALVING,
    ),
    "spatial mean (global pool)": (lambda m, y, x: F.relu(y), lambda y: y.mean((2, 3)), PoolingWindows((8, 8), (8, 8), (0, 0))),
    "residual add of two convs": (lambda m, y, x: F.relu(y + m.b(x)), nn.MaxPool2d(2), HALVING),
    "strided 1x1 conv on the way": (lambda m, y, x: m.one_strided(F.relu(y)), nn.MaxPool2d(2), None),
    "3x3 conv on the way": (lambda m, y, x: m.three(F.relu(y)), nn.MaxPool2d(2), None),
    "output read twice": (lambda m, y, x: F.relu(y) + y.sum(), nn.MaxPool2d(2), None),
    "adaptive pool with unequal windows": (lambda m, y, x: F.relu(y), nn.AdaptiveAvgPool2d(3), None),
    "adaptive pool with equal windows": (lambda m, y, x: F.relu(y), nn.AdaptiveMaxPool2d((4, None)), HALVING._replace(kernel=(2, 1), stride=(2, 1))),
}  # fmt: skip


@pytest.mark.parametrize("method", ["fx", "export"])
@pytest.mark.parametrize("case", list(CASES))
def test_forms_that_graphs_take(case, method):
    between, pool, expected = CASES[case]
    gm = capture(Net(between, pool).eval(), (1, 2, 8, 8), method=method).graph_module
    found = _all_convs(gm)
    assert found["a"] == expected
    if case == "residual add of two convs":
        assert found["b"] == expected


def test_a_conv_without_recorded_shape(captured):
    """A node a pass has just inserted has no shape yet: the nodes after it tell the map."""
    gm = captured("nin", "fx")
    conv3 = next(layer.node for layer in find_layers(gm) if layer.name == "conv3")
    meta = conv3.meta.pop("tensor_meta")
    try:
        assert find_next_pooling(gm, conv3) == PoolingWindows((8, 8), (8, 8), (0, 0))
    finally:
        conv3.meta["tensor_meta"] = meta


@pytest.mark.filterwarnings(
    "ignore::FutureWarning"
)  # torch's own, from run_decompositions
def test_decomposed_export_graph():
    """After run_decompositions: aten.convolution, batch norm as a tuple op read by getitem,
    max pool with indices."""
    model = Net(
        lambda m, y, x: F.batch_norm(y, m.mean, m.var, training=False).relu(),
        nn.MaxPool2d(2, padding=1),
    ).eval()
    program = torch.export.export(
        model, (torch.randn(2, 2, 8, 8),)
    ).run_decompositions()
    gm = program.module()
    targets = {node.target for node in gm.graph.nodes}
    assert torch.ops.aten._native_batch_norm_legit_no_training.default in targets
    assert torch.ops.aten.max_pool2d_with_indices.default in targets
    conv = next(
        n
        for n in gm.graph.nodes
        if n.target is torch.ops.aten.convolution.default
        and "a_weight" in str(n.args[1])
    )
    assert find_next_pooling(gm, conv) == PoolingWindows((2, 2), (2, 2), (1, 1))
