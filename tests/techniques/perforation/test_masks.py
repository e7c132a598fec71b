import itertools
import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsify_cnn.techniques.perforation.masks import (
    KEPT_FRACTIONS,
    MASK_TYPES,
    grid_mask,
    impact_scores,
    kept_count,
    kept_mask,
    pooling_scores,
    top_positions,
)
from sparsify_cnn.techniques.perforation.op import PerforatedConv
from sparsify_cnn.transform.capture import capture
from sparsify_cnn.transform.match import PoolingWindows

MAPS = [(1, 1), (4, 4), (5, 7), (3, 13), (13, 13), (21, 21), (55, 55)]
POOL = (3, 2, 1)


def _exact(q: float) -> Fraction:
    return Fraction(q).limit_denominator(100)  # the rate grid's q are k/l with l <= 20


def _masks(kind, hw, q, seed=0):
    scores = (
        torch.rand(hw, generator=torch.Generator().manual_seed(seed + 100))
        if kind == "impact"
        else None
    )
    return kept_mask(kind, hw, q, scores=scores, pooling=POOL, seed=seed)


def test_the_rate_grid():
    assert KEPT_FRACTIONS[:3] == (1.0, 2 / 3, 1 / 2)
    assert KEPT_FRACTIONS[-1] == 1 / 20 and len(KEPT_FRACTIONS) == 21
    assert all(a > b for a, b in itertools.pairwise(KEPT_FRACTIONS))


@pytest.mark.parametrize("hw", MAPS)
def test_counts_for_every_rate(hw):
    positions = hw[0] * hw[1]
    for q in KEPT_FRACTIONS:
        expected = max(1, math.floor(_exact(q) * positions))
        assert kept_count(positions, q) == expected
        for kind in ("uniform", "pooling", "impact"):
            mask = _masks(kind, hw, q)
            assert mask.dtype == torch.bool and tuple(mask.shape) == hw
            assert int(mask.sum()) == expected, (kind, q)
        # grid: n_h x n_w with n_h = floor(sqrt(q) H) (= floor(sqrt(q H W)) on square maps)
        n_h, n_w = (max(1, math.isqrt(math.floor(_exact(q) * s * s))) for s in hw)
        assert int(grid_mask(hw, q).sum()) == n_h * n_w, q


def test_tiny_maps_keep_one_position():
    assert kept_count(16, 1 / 20) == 1  # floor(0.8) = 0
    for kind in MASK_TYPES:
        assert int(_masks(kind, (4, 4), 1 / 20).sum()) == 1


def test_score_masks_are_nested_as_the_rate_falls():
    for kind in ("uniform", "pooling", "impact"):
        masks = [_masks(kind, (13, 13), q, seed=3) for q in KEPT_FRACTIONS]
        for larger, smaller in itertools.pairwise(masks):
            assert torch.equal(larger | smaller, larger), kind


@pytest.mark.parametrize("hw", [(4, 4), (10, 10), (13, 13), (21, 21), (7, 30), (30, 7)])
def test_grid_geometry(hw):
    """A product of rows and columns, one in each cell of an n_h x n_w partition."""
    h, w = hw
    for seed in range(5):
        for q in KEPT_FRACTIONS:
            mask = grid_mask(hw, q, seed)
            rows, cols = (
                mask.any(dim=1).nonzero().flatten(),
                mask.any(dim=0).nonzero().flatten(),
            )
            assert torch.equal(
                mask,
                mask.new_zeros(hw).index_put(
                    (rows[:, None], cols[None, :]), torch.tensor(True)
                ),
            )
            for index, size in ((rows, h), (cols, w)):
                n = len(index)
                assert n == max(1, math.isqrt(math.floor(_exact(q) * size * size)))
                for i, r in enumerate(index.tolist()):
                    assert (
                        i * size < (r + 1) * n and r * n < (i + 1) * size
                    )  # r = floor(t), t in cell i


def test_grid_follows_the_paper_formula():
    """H' = 10, n = 3, u = 1/4: the paper's 1-based ceil((10/3)(i + u)) = 1, 5, 8."""
    from sparsify_cnn.techniques.perforation import masks as perforation_masks

    assert perforation_masks._grid_axis(
        10, 3, perforation_masks._GRID_STEPS // 4
    ).tolist() == [0, 4, 7]


def test_grid_shift_is_random():
    firsts = {
        tuple(grid_mask((16, 16), 1 / 4, seed).nonzero()[0].tolist())
        for seed in range(20)
    }
    assert firsts == {(0, 0), (0, 1), (1, 0), (1, 1)}  # 8 x 8 points in 2 x 2 cells


def test_pooling_scores_by_hand():
    """3x3 windows, stride 2, padding 1 on 8 x 8: windows start at -1, 1, 3, 5 on each axis."""
    per_axis = torch.tensor([1.0, 2, 1, 2, 1, 2, 1, 1])
    scores = pooling_scores((8, 8), 3, 2, 1)
    assert torch.equal(scores, per_axis[:, None] * per_axis[None, :])
    assert scores[0, 0] == 1 and scores[7, 7] == 1  # corners: one window
    assert scores[0, 1] == 2 and scores[1, 0] == 2  # edge, in two windows' overlap
    assert scores[1, 1] == 4 and scores[5, 5] == 4  # overlap of overlaps
    # The 9 positions in four windows are the 9 kept at 9/64.
    assert torch.equal(
        kept_mask("pooling", (8, 8), 1 / 7, pooling=(3, 2, 1)), scores == 4
    )


def test_pooling_scores_in_ceil_mode():
    """3/2 on 16 positions: rounding down leaves the last position out, rounding up adds a window."""
    floor = [1, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 1, 0]
    assert pooling_scores((16, 1), (3, 1), (2, 1))[:, 0].tolist() == floor
    assert pooling_scores((16, 1), (3, 1), (2, 1), ceil_mode=True)[
        :, 0
    ].tolist() == floor[:14] + [2, 1]


@pytest.mark.parametrize(
    "windows",
    [PoolingWindows((3, 3), (2, 2), (1, 1), (1, 1), True), PoolingWindows((2, 3), (2, 1), (1, 0), (1, 1), False),
     PoolingWindows((5, 5), (3, 3), (2, 2), (1, 1), True), PoolingWindows((3, 2), (2, 3), (1, 1), (2, 3), False)],
)  # fmt: skip
@pytest.mark.parametrize("hw", [(7, 9), (16, 16)])
def test_pooling_scores_count_windows_as_torch_does(windows, hw):
    ones = torch.ones(1, 1, *hw, dtype=torch.float64, requires_grad=True)
    kernel, stride, padding, dilation, ceil_mode = windows
    if dilation == (
        1,
        1,
    ):  # every window adds its input positions once: its gradient counts windows
        pooled = F.avg_pool2d(
            ones,
            kernel,
            stride,
            padding,
            ceil_mode,
            count_include_pad=True,
            divisor_override=1,
        )
        (expected,) = torch.autograd.grad(pooled.sum(), ones)
    else:
        expected = F.fold(
            F.unfold(ones, kernel, dilation, padding, stride),
            hw,
            kernel,
            dilation,
            padding,
            stride,
        )
    assert torch.equal(pooling_scores(hw, *windows), expected[0, 0])


def test_seeds():
    for kind in MASK_TYPES:
        same = [_masks(kind, (12, 12), 1 / 4, seed=7) for _ in range(2)]
        assert torch.equal(*same), kind
        if kind != "impact":  # impact scores fix the mask; the seed only breaks ties
            assert not torch.equal(same[0], _masks(kind, (12, 12), 1 / 4, seed=8)), kind
    ties = torch.zeros(12, 12)
    assert torch.equal(top_positions(ties, 20, seed=1), top_positions(ties, 20, seed=1))
    assert not torch.equal(
        top_positions(ties, 20, seed=1), top_positions(ties, 20, seed=2)
    )


def test_top_positions_keep_the_highest():
    scores = torch.randperm(30).view(5, 6).float()
    assert torch.equal(top_positions(scores, 7), scores >= 23)


def test_bad_requests_say_what_is_wrong():
    with pytest.raises(ValueError, match="reaches none"):
        kept_mask("pooling", (8, 8), 1 / 2)
    with pytest.raises(ValueError, match="scores"):
        kept_mask("impact", (8, 8), 1 / 2, scores=torch.zeros(4, 4))
    with pytest.raises(ValueError, match="choose one of"):
        kept_mask("random", (8, 8), 1 / 2)
    with pytest.raises(ValueError, match="kept fraction"):
        kept_mask("uniform", (8, 8), 0)
    with pytest.raises(ValueError, match="does not fit"):
        pooling_scores((2, 2), 5, 1)


class Toy(nn.Module):
    """One perforated conv, a shift and a ReLU, linear."""

    def __init__(self, in_place: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.in_place = in_place
        self.conv = PerforatedConv(
            nn.Conv2d(2, 3, 3, padding=1), (6, 6), layer_name="conv"
        )
        self.fc = nn.Linear(3 * 6 * 6, 4)

    def forward(self, x):
        v = self.conv(x)
        v = v.add_(0.5) if self.in_place else v + 0.5
        return self.fc(F.relu(v).flatten(1))


def _by_hand(model: Toy, x, loss_of_logits) -> torch.Tensor:
    """sum over channels |V dL/dV|, mean over images, with autograd on the eager model."""
    model.eval()
    v = model.conv(x)
    v.retain_grad()
    loss_of_logits(model.fc(F.relu(v + 0.5).flatten(1))).backward()
    model.zero_grad(set_to_none=True)
    return (v * v.grad).abs().sum(dim=1).mean(dim=0).detach()


def _data(n=8):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 2, 6, 6, generator=generator), torch.randint(
        4, (n,), generator=generator
    )


def test_impact_is_the_taylor_term():
    model, (x, y) = Toy(), _data()
    expected = _by_hand(
        model, x, lambda logits: F.cross_entropy(logits, y, reduction="sum")
    )
    scores = impact_scores(model, x, y, batch_size=3)  # batches of 3, 3, 2
    assert list(scores) == ["conv"]
    torch.testing.assert_close(scores["conv"], expected, rtol=1e-5, atol=1e-7)
    gm = capture(
        model, (1, 2, 6, 6), method="fx"
    ).graph_module  # the op stays one module
    torch.testing.assert_close(
        impact_scores(gm, x, y)["conv"], expected, rtol=1e-5, atol=1e-7
    )
    # V is the conv's output, also when the next op overwrites it in place.
    torch.testing.assert_close(
        impact_scores(Toy(in_place=True), x, y)["conv"], expected, rtol=1e-5, atol=1e-7
    )


def test_impact_on_a_perforated_layer():
    model, (x, y) = Toy(), _data()
    model.conv.set_kept(grid_mask((6, 6), 1 / 4, seed=0))
    expected = _by_hand(
        model, x, lambda logits: F.cross_entropy(logits, y, reduction="sum")
    )
    torch.testing.assert_close(
        impact_scores(model, x, y)["conv"], expected, rtol=1e-5, atol=1e-7
    )
    mask = kept_mask("impact", (6, 6), 1 / 2, scores=expected)
    assert torch.equal(
        mask, expected >= expected.flatten().sort(descending=True).values[17]
    )


def test_label_free_impact_against_the_dense_logits():
    model, (x, _) = Toy(), _data()
    with torch.no_grad():
        dense = model.eval()(x)
    # At the dense model, KL(dense || model) is at its minimum: no first-order impact.
    assert impact_scores(model, x, dense, loss="kl")["conv"].abs().max() < 1e-6
    model.conv.set_kept(grid_mask((6, 6), 1 / 4, seed=0))

    def kl(logits):
        return F.kl_div(
            F.log_softmax(logits, 1),
            F.log_softmax(dense, 1),
            reduction="sum",
            log_target=True,
        )

    expected = _by_hand(model, x, kl)
    assert expected.abs().max() > 1e-4
    torch.testing.assert_close(
        impact_scores(model, x, dense, loss="kl", batch_size=5)["conv"],
        expected,
        rtol=1e-5,
        atol=1e-7,
    )


def test_impact_leaves_the_model_as_it_found_it():
    model, (x, y) = Toy(), _data()
    model.train()
    model.fc.weight.requires_grad_(False)
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    impact_scores(model, x, y)
    assert all(m.training for m in model.modules())
    assert {name: p.requires_grad for name, p in model.named_parameters()} == before
    assert all(p.grad is None for p in model.parameters())


def test_impact_rejects_mismatched_targets():
    model, (x, y) = Toy(), _data()
    with pytest.raises(ValueError, match="integer labels"):
        impact_scores(model, x, y.float())
    with pytest.raises(ValueError, match="logits"):
        impact_scores(model, x, y, loss="kl")
