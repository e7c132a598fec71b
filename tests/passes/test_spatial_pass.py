import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsify_cnn import models
from sparsify_cnn.errors import InputError
from sparsify_cnn.ops.spatial import SpatialConv
from sparsify_cnn.passes.spatial import SpatialConfig, insert_spatial_ops, spatial_ops
from sparsify_cnn.report.accounting import account
from sparsify_cnn.transform.capture import capture


@pytest.mark.parametrize("name, size", [("lenet", None), ("cq", None), ("alexbn", None), ("resnet18", 64)])
@pytest.mark.parametrize("method", ["fx", "export"])
def test_zoo_models_with_all_ones_masks_equal_the_original(name, size, method):
    torch.manual_seed(0)
    entry = models.get_entry(name)
    model = entry.factory().eval()
    shape = (entry.input_shape[0], size or entry.input_shape[1], size or entry.input_shape[2])
    result = insert_spatial_ops(capture(model, (1, *shape), method=method).graph_module)
    assert result.inserted
    x = torch.randn(3, *shape)
    with torch.no_grad():
        assert torch.equal(result.graph_module(x), model(x))


def test_what_the_pass_finds_in_zoo_models():
    cq = insert_spatial_ops(capture(models.build("cq"), (1, 3, 32, 32)).graph_module)
    assert list(cq.inserted) == ["conv1", "conv2", "conv3"]  # conv1 -> max pool -> ReLU commutes
    resnet = insert_spatial_ops(capture(models.build("resnet18"), (1, 3, 64, 64)).graph_module)
    assert len(resnet.inserted) == 17 and "layer1.0.conv2" in resnet.inserted  # through the residual add
    assert "one conv per ReLU" in resnet.skipped["layer2.0.downsample.0"]
    caffe = insert_spatial_ops(capture(models.build("lenet_caffe"), (1, 1, 28, 28)).graph_module)
    assert not caffe.inserted and "after a max pool" in caffe.skipped["conv2"]


class Variants(nn.Module):
    """Conv + ReLU in the forms traced graphs take."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.b_bias = nn.Parameter(torch.randn(4, 1, 1))
        self.c = nn.Conv2d(4, 4, 1)
        self.mean, self.var = nn.Parameter(torch.randn(4), requires_grad=False), nn.Parameter(torch.rand(4) + 0.5, requires_grad=False)
        self.d = nn.Conv2d(4, 4, 3, padding=1)
        self.e = nn.Conv2d(4, 4, 3, padding=1)
        self.f = nn.Conv2d(4, 4, 3, padding=1)
        self.g = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        x = F.relu(self.a(x), inplace=True)
        x = torch.relu_(self.b(x) + self.b_bias)
        x = F.batch_norm(self.c(x), self.mean, self.var, training=False).relu()
        skip = x
        x = F.max_pool2d(self.d(x), 2)
        x = torch.relu(x)
        x = F.relu(operator.add(self.e(F.interpolate(x, scale_factor=2.0)), skip))
        y = self.f(x)
        return torch.sigmoid(y) + self.g(y)


@pytest.mark.parametrize("method", ["fx", "export"])
def test_relu_variants_bias_norm_pool_and_residual(method):
    torch.manual_seed(0)
    model = Variants().eval()
    result = insert_spatial_ops(capture(model, (1, 2, 8, 8), method=method).graph_module)
    assert set(result.inserted) == {"a", "b", "c", "d", "e"}
    assert "before any ReLU" in result.skipped["f"]
    x = torch.randn(2, 2, 8, 8)
    torch.testing.assert_close(result.graph_module(x), model(x), rtol=0, atol=0)
    ops = spatial_ops(result.graph_module)
    assert ops["b"].bias is not None and ops["c"].norm is not None
    assert ops["d"].out_hw == (8, 8)  # the op sits before the pool, on the full map


def test_skip_reasons():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = nn.Conv2d(3, 3, 3, padding=1)
            self.two_users = nn.Conv2d(3, 3, 3, padding=1)
            self.one_d = nn.Conv1d(3, 3, 3, padding=1)
            self.bn = nn.BatchNorm2d(3).train()
            self.trained = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            x = torch.relu(self.shared(torch.relu(self.shared(x))))
            y = self.two_users(x)
            x = torch.relu(y) + y
            x = torch.relu(self.bn(self.trained(x)))
            return torch.relu(self.one_d(x.flatten(2))).sum()

    gm = capture(Odd(), (1, 3, 4, 4), method="fx").graph_module
    gm.bn.train()  # capture puts the model in eval mode; a train-mode norm must be refused
    result = insert_spatial_ops(gm)
    assert not result.inserted
    assert result.skipped["shared"] == "its module is called more than once"
    assert result.skipped["two_users"] == "its output has several users before any ReLU"
    assert "train mode" in result.skipped["trained"]
    assert "1-D conv" in result.skipped["one_d"]


def test_selection_config_and_accounting():
    gm = capture(models.build("cq"), (1, 3, 32, 32)).graph_module
    result = insert_spatial_ops(gm, SpatialConfig(layers=("conv[23]",)))
    assert list(result.inserted) == ["conv2", "conv3"] and result.skipped["conv1"] == "not selected"
    assert not any(isinstance(m, SpatialConv) for m in gm.modules())  # the input is not modified
    only_big = insert_spatial_ops(gm, filter_fn=lambda layer: layer.out_channels >= 64)
    assert list(only_big.inserted) == ["conv3"]
    grouped = insert_spatial_ops(gm, SpatialConfig(channel_group=64))
    assert list(grouped.inserted) == ["conv3"] and "does not divide its 32 channels" in grouped.skipped["conv1"]
    acc = account(result.graph_module)
    assert [row.kind for row in acc.layers] == ["conv", "spatial", "spatial", "linear", "linear"]
    assert acc.total_macs == account(gm).total_macs


def test_config_validation_and_round_trip():
    with pytest.raises(InputError, match="patch size must be one of"):
        SpatialConfig(patch_size=1)
    with pytest.raises(InputError, match="edge"):
        SpatialConfig(edge="wrap")
    config = SpatialConfig(patch_size=3, edge="compute", channel_group=2, layers=("a*",))
    assert SpatialConfig.from_dict(config.to_dict()) == config
