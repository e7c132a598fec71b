import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsify_cnn import models
from sparsify_cnn.data.dataset import Dataset, Split
from sparsify_cnn.errors import InputError
from sparsify_cnn.model_io import LoadedModel
from sparsify_cnn.pipeline import Prepared
from sparsify_cnn.plan import Plan
from sparsify_cnn.techniques.spatial.job import optimize_spatial
from sparsify_cnn.techniques.spatial.op import SpatialConv, predicted_zero
from sparsify_cnn.techniques.spatial.rewrite import SpatialConfig, insert_spatial_ops, nothing_inserted, spatial_ops
from sparsify_cnn.transform.accounting import account
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


# --- ReLU-like activations: ReLU6, hardtanh(0, t), clamp(min=0[, max=t]), clamp_min(0) ----------

BOUNDED_FORMS = {  # activation of y -> the upper bound the op must keep
    "nn.ReLU6": (lambda m, y: m.relu6(y), 6.0),
    "F.relu6": (lambda m, y: F.relu6(y), 6.0),
    "F.relu6 in place": (lambda m, y: F.relu6(y, inplace=True), 6.0),
    "nn.Hardtanh(0, 2)": (lambda m, y: m.hardtanh(y), 2.0),
    "F.hardtanh(0, 3)": (lambda m, y: F.hardtanh(y, 0.0, 3.0), 3.0),
    "F.hardtanh_(0, 2.5)": (lambda m, y: F.hardtanh_(y, 0.0, 2.5), 2.5),
    "torch.clamp(min=0, max=4)": (lambda m, y: torch.clamp(y, min=0, max=4), 4.0),
    "torch.clamp(min=0)": (lambda m, y: torch.clamp(y, min=0), None),
    "x.clamp(min=0)": (lambda m, y: y.clamp(min=0), None),
    "x.clamp_(0, 5)": (lambda m, y: y.clamp_(0, 5), 5.0),
    "torch.clamp_min(x, 0)": (lambda m, y: torch.clamp_min(y, 0), None),
    "x.clamp_min_(0.0)": (lambda m, y: y.clamp_min_(0.0), None),
}


class Bounded(nn.Module):
    """conv -> BN -> act, then conv + residual -> act; ``hook`` (None when captured) lets the
    reference apply each op's prediction to the activation's output."""

    def __init__(self, activation):
        super().__init__()
        self.activation = activation
        self.a, self.bn = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.relu6, self.hardtanh = nn.ReLU6(), nn.Hardtanh(0.0, 2.0)
        self.hook = None
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1), self.bn.running_var.uniform_(0.5, 1.5)
            self.a.weight.mul_(6.0), self.b.weight.mul_(6.0)  # outputs well above the bounds

    def forward(self, x):
        y = self._out("a", self.activation(self, self.bn(self.a(x))))
        return self._out("b", self.activation(self, self.b(y) + y))

    def _out(self, name, y):
        return y if self.hook is None else self.hook(name, y)


@pytest.mark.parametrize("method", ["fx", "export"])
@pytest.mark.parametrize("form", list(BOUNDED_FORMS))
def test_relu_like_activations_take_spatial_ops_that_keep_the_bound(form, method):
    activation, bound = BOUNDED_FORMS[form]
    torch.manual_seed(0)
    model = Bounded(activation).eval()
    result = insert_spatial_ops(capture(model, (1, 2, 6, 6), method=method).graph_module)
    ops = spatial_ops(result.graph_module)
    assert {name: op.max_value for name, op in ops.items()} == {"a": bound, "b": bound}
    assert ops["a"].norm is not None  # conv, BN, residual add and activations became the two ops:
    assert not [n for n in result.graph_module.graph.nodes if n.op in ("call_function", "call_method")]
    x = torch.randn(3, 2, 6, 6)
    with torch.no_grad():
        assert torch.equal(result.graph_module(x), model(x))  # all ones: exactly the original
        generator = torch.Generator().manual_seed(1)
        for op in ops.values():
            op.set_mask(torch.rand(op.mask.shape, generator=generator) < 0.5)
        model.hook = lambda name, y: y.masked_fill(predicted_zero(y, ops[name].mask, 2), 0.0)
        expected, got = model(x), result.graph_module(x)
    assert torch.equal(got, expected) and ops["b"].stats.predicted > 0
    if bound is not None:  # the bound is reached: the clamp matters
        assert got.max() == bound and (model.b(model.a(x)) > bound).any()


class InvertedResidual(nn.Module):
    """torchvision's MobileNetV2 block: [1x1 expand conv-BN-ReLU6] -> 3x3 depthwise
    conv-BN-ReLU6 -> 1x1 linear projection conv-BN [+ input]."""

    def __init__(self, inp, out, stride, expand):
        super().__init__()
        hidden = inp * expand
        layers = [] if expand == 1 else [_conv_bn_relu6(inp, hidden, 1)]
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden), nn.Conv2d(hidden, out, 1, bias=False),
                   nn.BatchNorm2d(out)]  # fmt: skip
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and inp == out

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def _conv_bn_relu6(inp, out, k, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(inp, out, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(out),
                         nn.ReLU6(inplace=True))  # fmt: skip


def mobilenet_v2_like() -> nn.Module:
    """The first MobileNetV2 stages at small width, with random BN statistics."""
    torch.manual_seed(0)
    features = nn.Sequential(_conv_bn_relu6(3, 8, 3, 2), InvertedResidual(8, 8, 1, 1), InvertedResidual(8, 12, 2, 6),
                             InvertedResidual(12, 12, 1, 6), _conv_bn_relu6(12, 32, 1))  # fmt: skip
    model = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.uniform_(-0.5, 0.5), module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 2.0), module.bias.uniform_(-0.5, 0.5)
    return model.eval()


MOBILENET_RELU6 = ["0.0.0", "0.1.conv.0.0", "0.2.conv.0.0", "0.2.conv.1.0", "0.3.conv.0.0", "0.3.conv.1.0", "0.4.0"]
MOBILENET_LINEAR = ["0.1.conv.1", "0.2.conv.2", "0.3.conv.2"]  # projections: no activation after them


@pytest.mark.parametrize("method", ["fx", "export"])
def test_mobilenet_v2_blocks(method, tmp_path):
    model = mobilenet_v2_like()
    gm = capture(model, (1, 3, 16, 16), method=method).graph_module
    result = insert_spatial_ops(gm)
    assert sorted(result.inserted) == sorted(MOBILENET_RELU6)  # stem, expansions, depthwise convs, last conv
    assert set(result.skipped) == set(MOBILENET_LINEAR)
    assert all("before any ReLU" in result.skipped[name] for name in MOBILENET_LINEAR)
    ops = spatial_ops(result.graph_module)
    assert all(op.max_value == 6.0 for op in ops.values()) and ops["0.2.conv.1.0"].conv.groups == 48
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(result.graph_module(x), model(x))
    generator = torch.Generator().manual_seed(0)
    masks = {name: torch.rand(op.mask.shape, generator=generator) < 0.5 for name, op in ops.items()}
    for name, op in ops.items():
        op.set_mask(masks[name])
    seen = {}
    hooks = [op.register_forward_hook(lambda op, args, out: seen.__setitem__(op.layer_name, (args[0], out)))
             for op in ops.values()]  # fmt: skip
    with torch.no_grad():
        masked = result.graph_module(x)
    for hook in hooks:
        hook.remove()
    for name, op in ops.items():  # each op on its input: the block's own layers, then the prediction
        inp, out = seen[name]
        dense = nn.ReLU6()(op.norm(op.conv(inp)))
        assert torch.equal(out, dense.masked_fill(predicted_zero(dense, op.mask, 2), 0.0)), name
    assert not torch.equal(masked, model(x))
    # A plan re-applied to the dense graph gives the same ops, bounds and outputs.
    plan = Plan("spatial", SpatialConfig().to_dict(), masks)
    plan.save(tmp_path / "plan.json")
    again = Plan.load(tmp_path / "plan.json").apply(gm).graph_module
    assert all(op.max_value == 6.0 for op in spatial_ops(again).values())
    with torch.no_grad():
        assert torch.equal(again(x), masked)


def test_refused_lower_bounds_leave_the_conv_with_the_reason():
    class Symmetric(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return torch.clamp(self.c(F.hardtanh(self.b(F.relu6(self.a(x))))), min=0.1)

    result = insert_spatial_ops(capture(Symmetric(), (1, 2, 8, 8)).graph_module)
    assert list(result.inserted) == ["a"]
    assert "lower bound -1.0" in result.skipped["b"] and "lower bound 0.1" in result.skipped["c"]


class NoRelu(nn.Module):
    """Many convs and not one ReLU-like activation (hardswish, sigmoid, hardtanh(-1, 1))."""

    def __init__(self, convs=60):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(4, 4, 3, padding=1) for _ in range(convs))

    def forward(self, x):
        for i, conv in enumerate(self.convs):
            x = (F.hardswish, torch.sigmoid, F.hardswish, F.hardtanh)[i % 4](conv(x))
        return x.mean((2, 3))


def test_nothing_inserted_is_one_short_line_with_counts_and_advice():
    result = insert_spatial_ops(capture(NoRelu(), (1, 4, 8, 8)).graph_module)
    assert not result.inserted and len(result.skipped) == 60
    message = nothing_inserted(result.skipped)
    assert len(message) < 300 and "\n" not in message
    assert message.startswith("no layer of the model can take a Spatial op (60 convs checked: ")
    assert "30x its output reaches hardswish before any ReLU; 15x " in message and "--technique perforation" in message
    assert nothing_inserted({}) == "no layer of the model can take a Spatial op: it has no 2-D convs"
    cq = capture(models.build("cq"), (1, 3, 32, 32)).graph_module
    selected = insert_spatial_ops(cq, SpatialConfig(layers=("x",)))
    assert nothing_inserted(selected.skipped).endswith("(3 convs checked: 3x not selected); check --layers")


def test_optimize_raises_the_short_message_for_a_model_without_relus():
    model = NoRelu()
    x = torch.randn(8, 4, 8, 8)
    split = Split(x, torch.zeros(8, dtype=torch.long))
    data = Dataset("random", split, split, split, 4)
    prepared = Prepared(LoadedModel(model, "test", "pickle"), capture(model, (1, 4, 8, 8)), data)
    with pytest.raises(InputError) as error:
        optimize_spatial(prepared)
    assert len(str(error.value)) < 300 and "60 convs checked" in str(error.value)


def test_no_layer_message_is_short_for_every_technique_and_groups_reasons():
    from sparsify_cnn.transform.rewrite import no_layer_message

    skipped = {f"features.{i}.block.0": f"depthwise conv ({96 + i} groups): SSC replaces dense convs" for i in range(40)}
    skipped["features.0.0"] = "no SSC choice fits its channels (3 -> 96)"
    message = no_layer_message("take SSC", skipped, "try --technique perforation")
    assert message == ("no layer of the model can take SSC (41 convs checked: 40x depthwise conv: SSC replaces dense "
                       "convs; 1x no SSC choice fits its channels); try --technique perforation")
    many = {f"c{i}": f"reason number {i} " + "x" * 60 for i in range(30)}
    assert len(no_layer_message("be perforated", many, "check --layers")) < 300
