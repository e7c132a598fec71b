from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsify_cnn.errors import InputError
from sparsify_cnn.techniques.ssc.op import SSCConv, divisors, ssc_ratio

# (C, T, kernel, stride, padding, dilation, g, p): branches on and off, odd and non-square kernels,
# "same" padding, padding below the centre (the 1x1 branch crops) and above it (it pads).
GEOMETRIES = [
    (8, 16, 3, 1, 1, 1, 4, 2),
    (8, 16, 3, 2, 0, 1, 2, 4),
    (12, 6, 3, 1, 2, 1, 3, 6),
    (16, 16, 5, 2, 1, 1, 16, 1),
    (6, 12, (3, 5), 1, (1, 2), 1, 2, 3),
    (8, 8, 3, 1, 2, 2, 8, 8),
    (8, 16, 3, 1, 1, 1, 4, None),
    (9, 6, 3, 2, 1, 1, 3, None),
    (8, 16, 3, 1, 1, 1, None, 4),
    (8, 16, 1, 2, 0, 1, None, 2),
    (8, 16, 1, 1, 0, 1, 2, 4),
]


def _op(geometry, seed=0):
    c, t, k, stride, padding, dilation, g, p = geometry
    torch.manual_seed(seed)
    op = SSCConv(c, t, k, stride, padding, dilation, g=g, p=p, bias=True, layer_name="conv")
    with torch.no_grad():
        op.bias.normal_()
    return op


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_efficient_form_equals_the_dense_reference(geometry):
    op = _op(geometry)
    x = torch.randn(2, op.in_channels, 11, 14, generator=torch.Generator().manual_seed(1))
    reference = F.conv2d(x, op.reference_weight(), op.bias, op.stride, op.padding, op.dilation)
    with torch.no_grad():
        got = op(x)
        torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(op.dense_equivalent()(x), reference, atol=1e-6, rtol=1e-6)
    # The reference is a dense weight times the fixed structure mask.
    assert not op.reference_weight()[~op.structure_mask()].any()


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_weights_and_macs_follow_r_exactly(geometry):
    op = _op(geometry)
    c, t, k, *_, g, p = geometry
    kh, kw = (k, k) if isinstance(k, int) else k
    expected = (Fraction(1, g) if g else 0) + (Fraction(1, p * kh * kw) if p else 0)
    assert op.ratio == expected == ssc_ratio(g, p, k)
    weights = sum(param.numel() for name, param in op.named_parameters() if name != "bias")
    assert weights == op.weight_params and Fraction(weights, t * c * kh * kw) == expected
    cost = op.cost((2, c, 11, 14), (2, t, 5, 7))
    assert cost.exact and cost.dense_macs == 35 * t * c * kh * kw
    assert Fraction(cost.performed_macs, cost.dense_macs) == expected


def test_g1_without_branch_is_the_dense_conv():
    op = _op((8, 16, 3, 2, 1, 1, 1, None))
    conv = nn.Conv2d(8, 16, 3, 2, 1)
    conv.load_state_dict({"weight": op.weight, "bias": op.bias})
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        assert torch.equal(op(x), conv(x))
    assert op.weight.shape == conv.weight.shape and op.ratio == 1


def test_g_equal_to_channels_is_the_depthwise_conv():
    op = _op((8, 8, 3, 1, 1, 1, 8, None))
    conv = nn.Conv2d(8, 8, 3, 1, 1, groups=8)
    conv.load_state_dict({"weight": op.weight, "bias": op.bias})
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        assert torch.equal(op(x), conv(x))
    assert op.ratio == Fraction(1, 8)


def test_no_kxk_branch_is_the_interleaved_pointwise_group_conv():
    op = _op((12, 8, 1, 1, 0, 1, None, 4))
    conv = nn.Conv2d(12, 8, 1, groups=4)
    conv.load_state_dict({"weight": op.pointwise_weight, "bias": op.bias})
    interleaved = [c for j in range(4) for c in range(j, 12, 4)]  # group j: the channels c mod 4 == j
    x = torch.randn(2, 12, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(op(x), conv(x[:, interleaved]), atol=1e-6, rtol=0)
    assert op.weight is None and op.ratio == Fraction(1, 4)


def test_each_filter_sees_its_block_and_one_residue_class():
    op = SSCConv(8, 4, 3, padding=1, g=2, p=2)
    blocks, pointwise = op.block_mask(), op.pointwise_mask()
    assert blocks[0].tolist() == [True] * 4 + [False] * 4 and blocks[3].tolist() == [False] * 4 + [True] * 4
    assert pointwise[0].tolist() == [True, False] * 4 and pointwise[3].tolist() == [False, True] * 4
    centre = op.structure_mask()[:, :, 1, 1]
    assert torch.equal(centre, blocks | pointwise) and not op.structure_mask()[:, :, 0, 0][~blocks].any()


@pytest.mark.parametrize("g, p", [(4, 2), (2, 8), (8, None), (None, 4)])
def test_from_conv_keeps_the_dense_weights_the_structure_allows(g, p):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 3, padding=1)
    op = SSCConv.from_conv(conv, g, p, layer_name="conv")
    mask = op.structure_mask()
    assert torch.equal(op.reference_weight(), conv.weight.detach() * mask)
    assert torch.equal(op.bias, conv.bias)
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(op(x), F.conv2d(x, conv.weight * mask, conv.bias, padding=1), atol=1e-5, rtol=0)


def test_zero_init_keeps_only_the_kxk_groups():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 3, padding=1, bias=False)
    op = SSCConv.from_conv(conv, 4, 2, init="zero")
    assert not op.pointwise_weight.any() and op.bias is None
    assert torch.equal(op.reference_weight(), conv.weight.detach() * op.block_mask()[:, :, None, None])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"in_channels": 12, "out_channels": 16, "g": 3}, "g=3 does not divide the output channels"),
        ({"in_channels": 6, "out_channels": 12, "g": 4}, "g=4 does not divide the input channels"),
        ({"in_channels": 8, "out_channels": 12, "g": 2, "p": 8}, "p=8 does not divide the output channels"),
        ({"in_channels": 8, "out_channels": 8, "g": None, "p": None}, "neither a k x k branch"),
        ({"in_channels": 8, "out_channels": 8, "g": 0}, "g=0 must be a positive integer"),
        ({"in_channels": 8, "out_channels": 8, "kernel_size": 2, "g": 2, "p": 2}, "needs a kernel centre"),
    ],
)
def test_invalid_choices_name_the_layer_and_what_is_wrong(kwargs, message):
    kwargs = {"kernel_size": 3, **kwargs}
    with pytest.raises(InputError, match=message) as info:
        SSCConv(**kwargs, layer_name="features.3")
    assert "features.3" in str(info.value) and "\n" not in str(info.value)


def test_exports_as_standard_aten_ops_only():
    op = _op((8, 16, 3, 2, 0, 1, 4, 2))  # crops and interleaves for the 1x1 branch
    program = torch.export.export(nn.Sequential(op), (torch.randn(2, 8, 9, 9),))
    calls = [node for node in program.graph.nodes if node.op == "call_function"]
    assert all(node.target.namespace == "aten" for node in calls)
    convs = [node for node in calls if node.target == torch.ops.aten.conv2d.default]
    assert sorted(node.args[6] for node in convs) == [2, 4]  # the two branches, grouped convs
    x = torch.randn(2, 8, 9, 9)
    torch.testing.assert_close(program.module()(x), op(x))


def test_divisors():
    assert divisors(12) == [1, 2, 3, 4, 6, 12] and divisors(1) == [1]


def test_from_conv_refuses_what_ssc_cannot_represent():
    with pytest.raises(InputError, match="has 2 groups"):
        SSCConv.from_conv(nn.Conv2d(8, 8, 3, groups=2), 2, 2, layer_name="grouped")
    with pytest.raises(InputError, match="pads in 'reflect' mode"):
        SSCConv.from_conv(nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), 2, 2, layer_name="reflect")
    with pytest.raises(InputError, match="init must be one of"):
        SSCConv.from_conv(nn.Conv2d(8, 8, 3), 2, 2, init="random")
