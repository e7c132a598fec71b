import pytest
import torch
import torch.nn.functional as F

from sparsify_cnn.errors import InputError
from sparsify_cnn.search.checkpoint import Checkpoint
from sparsify_cnn.techniques.perforation.masks import KEPT_FRACTIONS, kept_mask
from sparsify_cnn.techniques.perforation.rewrite import insert_perforated_convs, perforated_ops
from sparsify_cnn.techniques.perforation.search import (
    CostModel,
    FixedMasks,
    GreedyRateSearch,
    RateSearchConfig,
    notch_masks,
)
from sparsify_cnn.transform.capture import capture


@pytest.fixture()
def lenet_gm(trained_lenet):
    return insert_perforated_convs(capture(trained_lenet, (1, 1, 28, 28)).graph_module).graph_module


def _masks(gm, kind="uniform"):
    ops = perforated_ops(gm)
    return FixedMasks({name: [kept_mask(kind, op.out_hw, q, seed=0) for q in KEPT_FRACTIONS] for name, op in ops.items()})


def _search(gm, data, config, cost=None, checkpoint=None, labels=True):
    calib = data.calib
    return GreedyRateSearch(gm, calib.x, calib.y if labels else None, _masks(gm), config, cost or CostModel(gm), checkpoint).run()


def test_each_step_raises_one_layer_by_one_notch_and_takes_the_cheapest(lenet_gm, digits28):
    result = _search(lenet_gm, digits28, RateSearchConfig(mask="uniform", epsilon=None, speedup=2.5))
    masks = _masks(lenet_gm)
    notch = {name: 0 for name in perforated_ops(lenet_gm)}
    for before, after in zip(result.points, result.points[1:]):
        assert after.step == before.step + 1
        changed = [name for name in notch if after.kept[name] != before.kept[name]]
        assert changed == [after.layer]
        notch[after.layer] += 1
        assert after.kept[after.layer] == pytest.approx(float(masks.masks[after.layer][notch[after.layer]].float().mean()))
        assert torch.equal(result.masks_at(after)[after.layer], masks.masks[after.layer][notch[after.layer]])
        assert after.macs < before.macs
    assert result.points[-1].speedup >= 2.5 > result.points[-2].speedup
    assert result.stop_reason == "reached the target speedup 2.5x"


def test_the_first_step_matches_a_brute_force_evaluation(lenet_gm, digits28):
    """Suffix evaluation and the cost ratio, against whole-network runs of every candidate."""
    result = _search(lenet_gm, digits28, RateSearchConfig(mask="uniform", epsilon=None, speedup=1.05))
    ops, masks = perforated_ops(lenet_gm), _masks(lenet_gm)
    x, y = digits28.calib.x, digits28.calib.y
    dense_macs = CostModel(lenet_gm).dense_macs
    ratios = {}
    for op in ops.values():
        op.set_kept(torch.ones(op.out_hw, dtype=torch.bool))
    with torch.no_grad():
        dense_loss = float(F.cross_entropy(lenet_gm(x), y))
        for name, op in ops.items():
            op.set_kept(masks.masks[name][1])
            loss = float(F.cross_entropy(lenet_gm(x), y))
            saved = int((~masks.masks[name][1]).sum()) * op.macs_per_position
            ratios[name] = (loss - dense_loss) / saved
            op.set_kept(torch.ones(op.out_hw, dtype=torch.bool))
    assert result.points[1].layer == min(ratios, key=ratios.get)
    assert result.dense_macs == dense_macs
    assert result.points[0].loss == pytest.approx(dense_loss, rel=1e-5)


def test_no_step_breaks_the_accuracy_budget(lenet_gm, digits28):
    result = _search(lenet_gm, digits28, RateSearchConfig(mask="uniform", epsilon=0.02))
    floor = result.dense_accuracy - 0.02
    assert all(p.accuracy >= floor - 1e-9 for p in result.points)
    assert len(result.points) > 1
    assert result.stop_reason in ("every next step exceeds the accuracy budget", "every layer reached the sparsest rate")
    ops = perforated_ops(lenet_gm)  # the chosen masks are installed
    assert all(torch.equal(ops[name].kept, mask) for name, mask in result.kept.items())


def test_a_step_raises_the_best_layers_together_where_the_whole_network_meets_the_budget(lenet_gm, digits28, tmp_path):
    single = _search(lenet_gm, digits28, RateSearchConfig(mask="uniform", epsilon=0.02, layers_per_step=1))
    checkpoint = Checkpoint(tmp_path / "c.json", {"test": 2})
    paired = _search(lenet_gm, digits28, RateSearchConfig(mask="uniform", epsilon=0.02, layers_per_step=2), checkpoint=checkpoint)
    assert any(len(p.layers) == 2 for p in paired.points) and len(paired.points) < len(single.points)
    floor = paired.dense_accuracy - 0.02
    ops = perforated_ops(lenet_gm)
    x, y = digits28.calib.x, digits28.calib.y
    for before, after in zip(paired.points, paired.points[1:]):
        changed = [name for name in after.kept if after.kept[name] != before.kept[name]]
        assert sorted(changed) == sorted(after.layers) and after.layer == after.layers[0]
        assert after.accuracy >= floor - 1e-12
        for name, mask in paired.masks_at(after).items():  # the step's score is the whole network's
            ops[name].set_kept(mask)
        with torch.no_grad():
            assert after.accuracy == int((lenet_gm(x).argmax(1) == y).sum()) / len(y)
    # Steps of several layers resume from the checkpoint as they were taken.
    again = _search(lenet_gm, digits28, RateSearchConfig(mask="uniform", epsilon=0.02, layers_per_step=2),
                    checkpoint=Checkpoint(tmp_path / "c.json", {"test": 2}))  # fmt: skip
    assert again.candidates == 0 and [p.layers for p in again.points] == [p.layers for p in paired.points]


def test_label_free_search_scores_agreement_with_the_dense_model(lenet_gm, digits28):
    result = _search(lenet_gm, digits28, RateSearchConfig(mask="uniform", epsilon=None, speedup=1.5), labels=False)
    assert result.dense_accuracy == 1.0 and result.dense_loss == pytest.approx(0.0, abs=1e-6)
    assert result.points[-1].loss > 0


def test_a_layer_that_is_not_faster_is_never_raised(lenet_gm, digits28):
    def measure(op, kept):  # conv1 costs the same at every rate; conv2 scales with its kept positions
        return 1.0 if op.layer_name == "conv1" else 4.0 * float(kept.float().mean())

    cost = CostModel(lenet_gm, measure=measure, dense_ms=10.0)
    result = _search(lenet_gm, digits28, RateSearchConfig(mask="uniform", epsilon=None), cost=cost)
    assert all(p.layer == "conv2" for p in result.points[1:])
    assert result.points[-1].kept["conv1"] == 1.0
    assert result.point.speedup == pytest.approx(10.0 / (10.0 - 4.0 + 4.0 * result.point.kept["conv2"]))
    assert result.cost_unit == "ms"


def test_layers_timed_slower_than_the_whole_network_keep_every_speedup_positive(lenet_gm, digits28):
    """Timed alone on a busy machine, the layers add up to 12 ms and the network to 5 ms: the
    rest of the network counts as nothing (a cost of dense - saved went below zero here)."""

    def measure(op, kept):
        return 6.0 * float(kept.float().mean())

    cost = CostModel(lenet_gm, measure=measure, dense_ms=5.0)
    assert cost.dense_total == 12.0
    result = _search(lenet_gm, digits28, RateSearchConfig(mask="uniform", epsilon=None, speedup=2.0), cost=cost)
    assert all(p.cost > 0 and p.speedup >= 1.0 for p in result.points)
    kept = result.point.kept
    assert result.point.speedup == pytest.approx(12.0 / (6.0 * kept["conv1"] + 6.0 * kept["conv2"]), rel=0.02)


def test_the_dense_network_is_exactly_as_fast_as_itself(lenet_gm):
    """Times whose sums round differently by order (rest + (0.1 + 0.1) != rest + 0.1 + 0.1 here):
    the dense state's speedup is exactly 1, so a search that takes nothing reports no loss of
    speed (it read 0.9999999999999998)."""
    cost = CostModel(lenet_gm, measure=lambda op, kept: 0.1, dense_ms=1.7)
    assert cost.total({}) / cost.dense_total == 1.0
    assert cost.dense_total / cost.total({name: torch.ones(op.out_hw, dtype=torch.bool) for name, op in cost.ops.items()}) == 1.0


def test_an_interrupted_search_resumes_without_re_evaluating(lenet_gm, digits28, tmp_path):
    config = RateSearchConfig(mask="uniform", epsilon=None, speedup=2.0)
    identity = {"test": 1}
    first = _search(lenet_gm, digits28, config, checkpoint=Checkpoint(tmp_path / "c.json", identity))
    again = _search(lenet_gm, digits28, config, checkpoint=Checkpoint(tmp_path / "c.json", identity))
    assert again.candidates == 0 and first.candidates > 0
    assert [p.layer for p in again.points] == [p.layer for p in first.points]
    assert [p.accuracy for p in again.points] == [p.accuracy for p in first.points]


def test_notches_drop_repeated_counts():
    masks = [kept_mask("uniform", (3, 3), q, seed=0) for q in KEPT_FRACTIONS]
    kept = [int(m.sum()) for m in notch_masks(masks)]
    assert kept == sorted(set(kept), reverse=True) and kept[0] == 9 and kept[-1] == 1


@pytest.mark.parametrize("bad", [dict(mask="square"), dict(cost="flops"), dict(speedup=1.0), dict(epsilon=1.5)])
def test_bad_search_options_are_input_errors(bad):
    with pytest.raises(InputError):
        RateSearchConfig(**bad)
