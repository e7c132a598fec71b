import json
import math

import pytest
import torch
from torch import nn

from sparsify_cnn import models
from sparsify_cnn.errors import InputError
from sparsify_cnn.techniques.ssc.presets import PRESETS, assign_preset
from sparsify_cnn.techniques.ssc.rewrite import SSCConfig, insert_ssc, ssc_ops
from sparsify_cnn.transform.accounting import account
from sparsify_cnn.transform.capture import capture
from sparsify_cnn.transform.layers import find_layers

SMALL_PRESETS = [name for name, preset in PRESETS.items() if preset.model in ("vgg19", "resnet32")]


@pytest.fixture(scope="module")
def captures():
    """vgg19 and resnet32 (CIFAR size) captured both ways, made once."""
    made = {}
    for name in ("vgg19", "resnet32"):
        torch.manual_seed(0)
        model = models.build(name).eval()
        for method in ("fx", "export"):
            made[name, method] = capture(model, (1, 3, 32, 32), method=method).graph_module
    return made


def _masked_dense(gm, ops):
    """A copy of ``gm`` whose SSC-chosen convs have their weights times the structure masks."""
    from sparsify_cnn.transform.rewrite import copy_graph_module

    masked = copy_graph_module(gm)
    with torch.no_grad():
        for layer in find_layers(masked):
            if layer.name in ops:
                layer.weight.mul_(ops[layer.name].structure_mask())
    return masked


@pytest.mark.parametrize("method", ["fx", "export"])
@pytest.mark.parametrize("preset", SMALL_PRESETS)
def test_presets_rewrite_vgg19_and_resnet32(captures, preset, method):
    gm = captures[PRESETS[preset].model, method]
    result = insert_ssc(gm, SSCConfig(preset=preset))
    rewritten, assignment = result.graph_module, result.assignment
    ops = ssc_ops(rewritten)
    assert list(ops) == list(result.inserted) == list(assignment.choices) and ops
    assert {name: (op.g, op.p) for name, op in ops.items()} == assignment.choices
    assert set(result.skipped) | set(result.inserted) == {
        layer.name for layer in find_layers(gm) if layer.kind == "conv"
    }
    # The fraction it reports is the one the rewritten model has (every parameter counted).
    assert math.isclose(account(rewritten).total_params / account(gm).total_params, assignment.fraction, rel_tol=1e-12)
    assert assignment.target == PRESETS[preset].alpha
    # Initialised from the dense weights: the rewritten model is the dense one with masked weights.
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), _masked_dense(gm, ops)(x), atol=1e-4, rtol=1e-4)


def test_preset_values_and_reasons_on_vgg19(captures):
    gm = captures["vgg19", "fx"]
    ten = assign_preset(gm, "vgg19-cifar10-10")
    assert ten.choices["features.7"] == (2, 2) and ten.choices["features.49"] == (16, 2)
    assert list(ten.skipped) == ["features.0", "features.3"] and "g=1 keeps the dense" in ten.skipped["features.3"]
    assert 0.14 < ten.fraction < 0.15  # the seed's 10% is 14.5% of this model's parameters
    # The 2% table prints p=25, which divides no 512-channel layer: dense unless asked to round.
    two = assign_preset(gm, "vgg19-cifar10-2")
    assert "p=25 does not divide the input channels" in two.skipped["features.49"] and two.fraction > 0.9
    rounded = assign_preset(gm, "vgg19-cifar10-2", nondividing="nearest")
    assert rounded.choices["features.49"] == (64, 32) and "p=25 -> 32" in rounded.notes["features.49"]
    assert rounded.fraction < 0.04


def test_resnet50_preset_makes_1x1_convs_pointwise_group_convs():
    torch.manual_seed(0)
    gm = capture(models.build("resnet50", num_classes=1000), (1, 3, 64, 64)).graph_module
    result = insert_ssc(gm, SSCConfig(preset="resnet50-imagenet-20"))
    ops = ssc_ops(result.graph_module)
    assert (ops["layer4.0.conv3"].g, ops["layer4.0.conv3"].p) == (None, 8)  # 2048 filters: p = 8
    assert (ops["layer3.1.conv2"].g, ops["layer3.1.conv2"].p) == (4, 4)  # 3x3 of 256 filters
    assert "7x7" in result.skipped["conv1"] and "p=1 on a 1x1 conv" in result.skipped["layer1.0.conv1"]
    fraction = account(result.graph_module).total_params / account(gm).total_params
    assert math.isclose(fraction, result.assignment.fraction, rel_tol=1e-12) and 0.2 < fraction < 0.3


class _Mixed(nn.Module):
    """A dense 3x3 conv, a depthwise conv, a grouped conv, a shared conv and a 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.dense = nn.Conv2d(8, 16, 3, padding=1)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=2)
        self.shared = nn.Conv2d(16, 16, 3, padding=1)
        self.pointwise = nn.Conv2d(16, 24, 1)

    def forward(self, x):
        x = self.grouped(self.depthwise(self.dense(x)))
        return self.pointwise(self.shared(self.shared(x)))


@pytest.mark.parametrize("method", ["fx", "export"])
def test_layers_that_cannot_take_ssc_keep_a_reason(method):
    torch.manual_seed(0)
    gm = capture(_Mixed(), (1, 8, 6, 6), method=method).graph_module
    config = SSCConfig(per_layer={"dense": (3, 2), "point*": (2, 4), "*": (4, 4)})
    result = insert_ssc(gm, config)
    assert not result.inserted
    assert "g=3 does not divide the input channels (I=8)" in result.skipped["dense"]
    assert "depthwise conv" in result.skipped["depthwise"] and "grouped conv (2 groups)" in result.skipped["grouped"]
    assert "only a pointwise choice" in result.skipped["pointwise"]
    # fx keeps one module called twice; torch.export makes two convs reading the same weights.
    assert any(why in result.skipped["shared"] for why in ("called more than once", "weights are shared"))
    result = insert_ssc(gm, SSCConfig(per_layer={"dense": (2, 4), "pointwise": (None, 4)}))
    assert list(result.inserted) == ["dense", "pointwise"]
    assert result.skipped["depthwise"].startswith("depthwise") and result.skipped["grouped"].startswith("grouped")
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(
            result.graph_module(x), _masked_dense(gm, ssc_ops(result.graph_module))(x), atol=1e-5, rtol=1e-5
        )


def test_globs_select_and_the_first_matching_entry_wins(captures):
    gm = captures["resnet32", "fx"]
    config = SSCConfig(per_layer={"layer3.0.*": (8, 2), "layer3.*": (4, 4)}, layers=("layer3.*",))
    result = insert_ssc(gm, config)
    ops = ssc_ops(result.graph_module)
    assert all(name.startswith("layer3.") for name in ops) and len(ops) == 10
    assert (ops["layer3.0.conv2"].g, ops["layer3.0.conv2"].p) == (8, 2)
    assert (ops["layer3.1.conv1"].g, ops["layer3.1.conv1"].p) == (4, 4)
    assert result.skipped["layer1.0.conv1"] == "not selected"
    assert "1x1 conv" in result.skipped["layer3.0.downsample.0"]


def test_without_the_pointwise_branch_r_is_one_over_g(captures):
    gm = captures["vgg19", "fx"]
    result = insert_ssc(gm, SSCConfig(preset="vgg19-cifar10-10", pointwise_branch=False))
    ops = ssc_ops(result.graph_module)
    assert ops and all(op.p is None and op.pointwise_weight is None for op in ops.values())
    dense, sparse = account(gm), account(result.graph_module)
    for name, op in ops.items():
        row = sparse.layer(name)
        assert row.kind == "ssc" and row.macs == dense.layer(name).macs
        assert row.performed_macs * op.g == row.macs


def test_zero_init_makes_the_layers_the_block_masked_dense_convs(captures):
    gm = captures["resnet32", "fx"]
    result = insert_ssc(gm, SSCConfig(per_layer={"layer2.1.conv1": (4, 2)}, init="zero"))
    op = ssc_ops(result.graph_module)["layer2.1.conv1"]
    dense = gm.get_submodule("layer2.1.conv1").weight.detach()
    assert not op.pointwise_weight.any()
    assert torch.equal(op.reference_weight(), dense * op.block_mask()[:, :, None, None])


def test_rewritten_model_trains(digits32):
    torch.manual_seed(0)
    gm = capture(models.build("cq"), (1, 3, 32, 32)).graph_module
    result = insert_ssc(gm, SSCConfig(per_layer={"conv2": (4, 2), "conv3": (2, 4)}))
    op = ssc_ops(result.graph_module)["conv2"]
    before = op.pointwise_weight.detach().clone()
    model = result.graph_module.train()
    loss = nn.functional.cross_entropy(model(digits32.train.x[:16]), digits32.train.y[:16])
    loss.backward()
    assert op.weight.grad is not None and op.pointwise_weight.grad.abs().sum() > 0
    assert torch.equal(op.pointwise_weight.detach(), before)


def test_config_validation_and_round_trip():
    with pytest.raises(InputError, match="exactly one of per_layer, preset, target_fraction; got none"):
        SSCConfig()
    with pytest.raises(InputError, match="got preset, target_fraction"):
        SSCConfig(preset="vgg19-cifar10-10", target_fraction=0.1)
    with pytest.raises(InputError, match="unknown SSC preset 'vgg19-10'; choose one of: vgg19-cifar10-10"):
        SSCConfig(preset="vgg19-10")
    with pytest.raises(InputError, match="target fraction must be in"):
        SSCConfig(target_fraction=0.0)
    with pytest.raises(InputError, match="init must be one of"):
        SSCConfig(target_fraction=0.1, init="random")
    with pytest.raises(InputError, match="nondividing must be one of"):
        SSCConfig(preset="vgg19-cifar10-2", nondividing="round")
    config = SSCConfig(per_layer={"features.*": (4, 2), "fc": (None, 2)}, layers=("features.*",), init="zero")
    assert config.per_layer == (("features.*", 4, 2), ("fc", None, 2))
    again = SSCConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


def test_exact_config_rebuilds_the_same_graph(captures):
    gm = captures["resnet32", "export"]
    first = insert_ssc(gm, SSCConfig(target_fraction=0.1))
    config = SSCConfig.exact(first.assignment.choices)
    again = insert_ssc(gm, SSCConfig.from_dict(json.loads(json.dumps(config.to_dict()))))
    assert again.assignment.choices == first.assignment.choices
    assert again.assignment.fraction == first.assignment.fraction
    for a, b in zip(first.graph_module.state_dict().items(), again.graph_module.state_dict().items()):
        assert a[0] == b[0] and torch.equal(a[1], b[1])
