import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsify_cnn.ops.registry import lowering
from sparsify_cnn.techniques.spatial.op import SpatialConv, all_patterns, diagonal, predicted_zero, spatial_conv, tile

MAP = torch.tensor(
    [
        [0.0, 5.0, 0.0, 0.0],
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 3.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
    ]
).view(1, 1, 4, 4)


def test_pattern_enumeration():
    assert all_patterns(2).shape == (14, 2, 2)
    assert all_patterns(3).shape == (510, 3, 3)
    assert all_patterns(2, (1, 1)).shape == (4, 2, 2)
    assert all_patterns(2, (2, 2)).shape == (6, 2, 2)
    assert all_patterns(2, (4, 4)).shape[0] == 0  # only the degenerate all-ones pattern
    counts = all_patterns(2).flatten(1).sum(1).tolist()
    assert counts == sorted(counts)  # fewest ones first
    assert torch.equal(diagonal(2), torch.tensor([[True, False], [False, True]]))


def test_tile_places_patterns_per_channel_and_patch():
    a, b = torch.tensor([[1, 0], [0, 0]], dtype=torch.bool), torch.tensor([[0, 0], [0, 1]], dtype=torch.bool)
    per_patch = torch.stack([torch.stack([a, b]), torch.stack([b, a])])  # (Hb=2, Wb=2, 2, 2)
    mask = tile(per_patch, channels=3, height=3, width=4, p=2)
    assert mask.shape == (3, 4, 4)
    expected = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0], [0, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(mask[2], expected)
    assert torch.equal(tile(a, 2, 4, 4, 2)[1], torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0]] * 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="do not tile"):
        tile(torch.ones(5, 2, 2, dtype=torch.bool), 3, 4, 4, 2)


def test_diagonal_rule_on_a_hand_made_map():
    mask = tile(diagonal(2), 1, 4, 4, 2)
    predicted = predicted_zero(MAP, mask, 2)
    expected = torch.tensor(
        [
            [0, 1, 0, 1],  # patch (0,0): diagonal zeros -> predicts 5 and 1 zero (two mispredictions)
            [1, 0, 1, 0],  # patch (0,1): all zero -> correct prediction
            [0, 1, 0, 0],  # patch (1,0): all zero; patch (1,1): diagonal holds 3 -> computed
            [1, 0, 0, 0],
        ],
        dtype=torch.bool,
    ).view(1, 1, 4, 4)
    assert torch.equal(predicted, expected)


def test_edge_patches_pad_or_compute():
    edge_map = torch.zeros(1, 1, 3, 3)
    edge_map[0, 0, 2, 0] = 2.0  # bottom-left patch: row 2 real, row 3 padding
    mask = tile(diagonal(2), 1, 3, 3, 2)
    padded = predicted_zero(edge_map, mask, 2, edge="pad")
    # Bottom-left patch: diagonal is (2,0)=2 -> computed; bottom-right: (2,2)=0 and padding -> predicted.
    assert padded[0, 0, 2].tolist() == [False, False, False]  # (2,2) is on the diagonal: computed
    assert padded[0, 0, 1, 2] and padded[0, 0, 0, 1] and padded[0, 0, 1, 0]
    computed = predicted_zero(edge_map, mask, 2, edge="compute")
    assert computed[0, 0, :2, :2].any() and not computed[0, 0, 2].any() and not computed[0, 0, :, 2].any()


def test_channel_group_predicts_only_when_all_channels_agree():
    two = torch.cat([MAP, torch.zeros_like(MAP)], dim=1)  # channel 1 is all zero: fires everywhere
    mask = tile(diagonal(2), 2, 4, 4, 2)
    alone = predicted_zero(two, mask, 2, channel_group=1)
    grouped = predicted_zero(two, mask, 2, channel_group=2)
    assert alone[0, 1, 3, 2]  # channel 1 alone predicts patch (1,1)
    assert not grouped[0, :, 2:, 2:].any()  # channel 0's patch (1,1) is live: neither predicts
    assert torch.equal(grouped[0, 0], alone[0, 0])  # elsewhere channel 0 decides as before


def _op(channels=3, **kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, channels, 3, padding=1)
    return SpatialConv(conv, (5, 5), layer_name="c", **kwargs).eval()


def test_all_ones_equals_the_dense_layers_and_counts_nothing_saved():
    op = _op()
    x = torch.randn(4, 2, 5, 5)
    assert torch.equal(op(x), torch.relu(op.conv(x)))
    assert op.stats.images == 4 and op.stats.predicted == 0
    cost = op.cost((4, 2, 5, 5), (4, 3, 5, 5))
    assert cost.dense_macs == cost.performed_macs == 3 * 25 * 2 * 9


def test_prediction_zeroes_and_counts_on_data():
    op = _op()
    op.set_mask(tile(diagonal(2), 3, 5, 5, 2))
    x = torch.randn(6, 2, 5, 5)
    dense = torch.relu(op.conv(x))
    out = op(x)
    predicted = predicted_zero(dense, op.mask, 2)
    assert torch.equal(out, dense.masked_fill(predicted, 0))
    stats = op.stats
    assert stats.predicted == int(predicted.sum()) > 0
    assert stats.mispredicted == int((predicted & (dense > 0)).sum())
    assert stats.computed_zeros == int((~predicted & (dense == 0)).sum())
    cost = op.cost((6, 2, 5, 5), (6, 3, 5, 5))
    assert cost.performed_macs == round(cost.dense_macs - stats.predicted / 6 * 18) and not cost.exact


def test_op_checks_its_inputs():
    with pytest.raises(ValueError, match="patch size"):
        _op(patch_size=1)
    with pytest.raises(ValueError, match="does not divide"):
        _op(channels=3, channel_group=2)
    op = _op()
    with pytest.raises(ValueError, match="does not fit"):
        op.set_mask(torch.ones(3, 4, 4))
    with pytest.raises(ValueError, match="built for 5x5"):
        op(torch.randn(1, 2, 6, 6))


@pytest.mark.parametrize("p", [3, 4])
def test_larger_patches(p):
    assert all_patterns(p, (1, 1)).shape == (p * p, p, p)
    out = torch.zeros(1, 1, 2 * p, 2 * p)
    out[0, 0, 0, 1] = 1.0  # off-diagonal in patch (0, 0): mispredicted by the diagonal
    out[0, 0, p, p] = 1.0  # on the diagonal of patch (1, 1): that patch is computed
    predicted = predicted_zero(out, tile(diagonal(p), 1, 2 * p, 2 * p, p), p)
    assert predicted[0, 0, 0, 1] and not predicted[0, 0, p + 1, p]
    assert int(predicted.sum()) == 3 * (p * p - p)  # three patches fire, their off-diagonals


# --- an upper bound on the ReLU (ReLU6 and other clamps to [0, t]) ----------------------------


def _bounded(max_value=6.0, **kwargs):
    op = _op(max_value=max_value, **kwargs)
    with torch.no_grad():
        op.conv.weight.mul_(8.0)  # outputs well above the bound, so that the clamp shows
    return op


def test_bounded_all_ones_equals_relu6_exactly_and_clamps():
    op = _bounded()
    x = torch.randn(4, 2, 5, 5)
    out = op(x)
    assert torch.equal(out, F.relu6(op.conv(x))) and torch.equal(op.dense_layer()(x), out)
    assert (out == 6.0).any() and (op.conv(x) > 6.0).any()


@pytest.mark.parametrize("max_value", [6.0, 0.5])
def test_bounded_prediction_equals_the_reference(max_value):
    op = _bounded(max_value)
    op.set_mask(tile(diagonal(2), 3, 5, 5, 2))
    x = torch.randn(6, 2, 5, 5)
    dense = F.hardtanh(op.conv(x), 0.0, max_value)
    out = op(x)
    predicted = predicted_zero(dense, op.mask, 2)
    assert predicted.any() and torch.equal(out, dense.masked_fill(predicted, 0))
    assert out.max() == max_value  # clamped, and the bound is reached
    assert op.stats.mispredicted == int((predicted & (dense > 0)).sum())


@pytest.mark.parametrize("max_value", [None, 1.5])
def test_custom_op_applies_the_bound_like_the_module(max_value):
    op = _bounded(max_value)
    op.set_mask(torch.rand(op.mask.shape, generator=torch.Generator().manual_seed(0)) < 0.5)
    op.track_stats = False
    x, residual = torch.randn(2, 2, 5, 5), torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        expected = op(x, residual)
        got = op._custom_op(x, residual)
    torch.testing.assert_close(got, expected)
    assert (got.max() == max_value) if max_value is not None else got.max() > 1.5


def test_custom_op_schema_and_fake_with_and_without_a_bound():
    generator = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 3, 6, 6, generator=generator), torch.randn(4, 3, 3, 3, generator=generator), torch.randn(4)
    mask = torch.rand(4, 6, 6, generator=generator) < 0.5
    args = (x, w, b, mask, None, [1, 1], [1, 1], [1, 1], 1, 2, False, 1)
    assert "float? max_value=None" in str(torch.ops.sparsify.spatial_conv.default._schema)
    for bound in ((), (None,), (2.0,)):
        checks = torch.library.opcheck(torch.ops.sparsify.spatial_conv.default, args + bound)
        assert set(checks.values()) == {"SUCCESS"}, checks
    assert torch.equal(spatial_conv(*args), spatial_conv(*args, None))
    bounded = spatial_conv(*args, 2.0)
    assert bounded.max() == 2.0 and torch.equal(bounded, spatial_conv(*args).clamp(max=2.0))


def test_bounded_op_exports_its_bound_to_the_custom_op():
    op = _bounded(3.0)
    op.set_mask(tile(diagonal(2), 3, 5, 5, 2))
    with lowering():
        program = torch.export.export(op, (torch.randn(1, 2, 5, 5),))
    (node,) = [n for n in program.graph.nodes if n.target is torch.ops.sparsify.spatial_conv.default]
    assert node.args[12] == 3.0


def test_bound_checks_and_repr():
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="upper bound must be > 0"):
            _op(max_value=bad)
    assert "max_value=6.0" in repr(_op(max_value=6.0)) and "max_value" not in repr(_op())
    assert repr(_op(max_value=6.0).dense_layer()) != repr(_op().dense_layer())  # timings are keyed by repr
