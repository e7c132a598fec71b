import itertools

import pytest
import torch
from torch import nn

from sparsify_cnn.ops.registry import lowering
from sparsify_cnn.techniques.perforation.op import (
    PerforatedConv,
    interpolation_table,
    perforated_conv,
)


def _random_kept(h, w, fraction, seed=0):
    g = torch.Generator().manual_seed(seed)
    kept = torch.rand(h, w, generator=g) < fraction
    kept[0, 0] = True
    return kept


def _brute_nearest_distance(kept):
    """For every position, the squared distance to its nearest kept position (brute force)."""
    h, w = kept.shape
    points = [(y, x) for y, x in itertools.product(range(h), range(w)) if kept[y, x]]
    return torch.tensor([[min((y - py) ** 2 + (x - px) ** 2 for py, px in points) for x in range(w)] for y in range(h)])


@pytest.mark.parametrize("fraction,seed", [(0.1, 0), (0.3, 1), (0.6, 2)])
def test_nearest_picks_a_nearest_kept_position(fraction, seed):
    kept = _random_kept(9, 13, fraction, seed)
    index, weight = interpolation_table(kept, "nearest")
    points = kept.flatten().nonzero().flatten()
    chosen = points[index[:, 0]]
    dy, dx = chosen // 13 - torch.arange(9 * 13) // 13, chosen % 13 - torch.arange(9 * 13) % 13
    assert torch.equal((dy * dy + dx * dx).view(9, 13), _brute_nearest_distance(kept))
    assert torch.equal(weight, torch.ones(9 * 13, 1))


def test_nearest_breaks_ties_at_random_but_seeded():
    kept = torch.zeros(1, 9, dtype=torch.bool)
    kept[0, ::2] = True  # every odd column is equidistant from two kept neighbours
    tables = [interpolation_table(kept, "nearest", seed=s)[0] for s in range(8)]
    assert torch.equal(tables[0], interpolation_table(kept, "nearest", seed=0)[0])
    odd_choices = {tuple(t[1::2, 0].tolist()) for t in tables}
    assert len(odd_choices) > 1


def test_barycentric_is_exact_on_linear_maps():
    kept = _random_kept(12, 10, 0.25, seed=3)
    index, weight = interpolation_table(kept, "barycentric")
    ys, xs = torch.meshgrid(torch.arange(12.0), torch.arange(10.0), indexing="ij")
    linear = (0.7 * ys - 1.3 * xs + 2.0).flatten()
    compact = linear[kept.flatten()]
    got = (compact[index] * weight).sum(dim=1)
    inside = weight[:, 1:].abs().sum(dim=1) > 0  # interpolated inside a triangle
    assert inside.sum() > 20
    torch.testing.assert_close(got[inside], linear[inside], atol=1e-4, rtol=0)
    torch.testing.assert_close(got[kept.flatten()], linear[kept.flatten()])
    assert torch.allclose(weight.sum(dim=1), torch.ones(120))


def test_barycentric_outside_the_hull_is_nearest():
    kept = torch.zeros(6, 6, dtype=torch.bool)
    kept[2, 2] = kept[2, 4] = kept[4, 3] = True
    index, weight = interpolation_table(kept, "barycentric")
    nearest, _ = interpolation_table(kept, "nearest")
    outside = weight[:, 1:].abs().sum(dim=1) == 0
    assert outside[0] and outside[35]
    assert torch.equal(index[outside, 0], nearest[outside, 0])


def test_collinear_kept_points_fall_back_to_nearest():
    kept = torch.zeros(5, 5, dtype=torch.bool)
    kept[2, :] = True
    index, weight = interpolation_table(kept, "barycentric")
    nearest, _ = interpolation_table(kept, "nearest")
    assert torch.equal(index[:, 0], nearest[:, 0]) and torch.equal(weight[:, 0], torch.ones(25))


def test_zero_interpolation_zeroes_skipped_positions():
    kept = _random_kept(7, 7, 0.4)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    op = PerforatedConv(conv, (7, 7), interpolation="zero")
    op.set_kept(kept)
    x = torch.randn(2, 3, 7, 7)
    y = op(x)
    dense = conv(x)
    assert torch.equal(y[..., ~kept], torch.zeros_like(y[..., ~kept]))
    torch.testing.assert_close(y[..., kept], dense[..., kept])


@pytest.mark.parametrize("interpolation", ["nearest", "zero", "barycentric"])
def test_all_kept_is_the_conv_itself(interpolation):
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    op = PerforatedConv(conv, (4, 4), interpolation=interpolation)
    op.set_kept(torch.ones(4, 4, dtype=torch.bool))
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(op(x), conv(x))
    assert op.rate == 0.0


def test_kept_positions_equal_the_dense_conv_and_skipped_copy_their_nearest():
    conv = nn.Conv2d(2, 3, 3, padding=1)
    op = PerforatedConv(conv, (6, 6))
    kept = _random_kept(6, 6, 0.3, seed=5)
    op.set_kept(kept)
    x = torch.randn(1, 2, 6, 6)
    y, dense = op(x).detach(), conv(x).detach()
    points = kept.flatten().nonzero().flatten()
    source = points[op.interp_index[:, 0]]
    torch.testing.assert_close(y.flatten(2), dense.flatten(2)[:, :, source])


def test_gradients_flow_to_weights_and_inputs_through_kept_positions_only():
    conv = nn.Conv2d(1, 1, 1, bias=False)
    op = PerforatedConv(conv, (4, 4))
    kept = torch.zeros(4, 4, dtype=torch.bool)
    kept[0, 0] = kept[3, 3] = True
    op.set_kept(kept)
    x = torch.randn(1, 1, 4, 4, requires_grad=True)
    op(x).sum().backward()
    grad = x.grad[0, 0]
    assert grad[~kept].abs().sum() == 0  # a 1x1 conv reads only its own position
    # Every position copies one of the two kept ones: their gradients sum to all 16 positions.
    assert torch.isclose(grad[kept].sum() / conv.weight.flatten()[0], torch.tensor(16.0))
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_cost_counts_kept_positions():
    conv = nn.Conv2d(4, 8, 3, padding=1)
    op = PerforatedConv(conv, (10, 10))
    kept = torch.zeros(10, 10, dtype=torch.bool)
    kept[::2, ::2] = True
    op.set_kept(kept)
    cost = op.cost((1, 4, 10, 10), (1, 8, 10, 10))
    assert cost.dense_macs == 100 * 8 * 4 * 9 and cost.performed_macs == 25 * 8 * 4 * 9 and cost.exact
    assert op.rate == 0.75


def test_wrong_mask_shape_and_empty_mask_are_refused():
    op = PerforatedConv(nn.Conv2d(1, 1, 3), (4, 4), layer_name="c")
    with pytest.raises(ValueError, match="does not fit 'c'"):
        op.set_kept(torch.ones(5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one"):
        op.set_kept(torch.zeros(4, 4, dtype=torch.bool))


@pytest.mark.parametrize("interpolation", ["nearest", "barycentric"])
def test_custom_op_equals_the_module(interpolation):
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2)
    op = PerforatedConv(conv, (5, 5), interpolation=interpolation)
    op.set_kept(_random_kept(5, 5, 0.4, seed=7))
    x = torch.randn(3, 4, 9, 9)
    got = perforated_conv(x, conv.weight, conv.bias, op.kept_index, op.interp_index, op.interp_weight,
                          [2, 2], [1, 1], [1, 1], 2)  # fmt: skip
    torch.testing.assert_close(got, op(x))


def test_lowering_exports_one_custom_op():
    op = PerforatedConv(nn.Conv2d(1, 2, 3), (4, 4))
    op.set_kept(_random_kept(4, 4, 0.5))
    with lowering():
        program = torch.export.export(op, (torch.randn(1, 1, 6, 6),))
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert targets == ["sparsify.perforated_conv.default"]
