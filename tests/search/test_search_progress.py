"""The searches tell a progress callback (sparsify_cnn.progress) where they are: counts that only
grow, the right totals, and one end per phase."""

import pytest

from sparsify_cnn.techniques.perforation.masks import KEPT_FRACTIONS, kept_mask
from sparsify_cnn.techniques.perforation.rewrite import insert_perforated_convs, perforated_ops
from sparsify_cnn.techniques.perforation.search import CostModel, FixedMasks, GreedyRateSearch, RateSearchConfig
from sparsify_cnn.techniques.spatial.evaluator import Evaluator
from sparsify_cnn.techniques.spatial.rewrite import insert_spatial_ops
from sparsify_cnn.techniques.spatial.search import SearchConfig, SpatialSearch
from sparsify_cnn.transform.capture import capture


def _recorder():
    calls = []
    return calls, lambda phase, item, done, total, **extra: calls.append((phase, item, done, total, extra))


def _phase(calls, name):
    return [call for call in calls if call[0] == name]


def _ends(calls):
    return [i for i, (_, _, done, total, extra) in enumerate(calls)
            if extra.get("end") or (done == total and not extra.get("at_most"))]  # fmt: skip


@pytest.mark.parametrize("limit", [10_000, 0])  # every combination; 0 forces the greedy back-off
def test_spatial_search_reports_layers_then_combinations(limit, trained_lenet, digits28):
    gm = insert_spatial_ops(capture(trained_lenet, (1, 1, 28, 28)).graph_module).graph_module
    ev = Evaluator(gm, digits28.calib.x[:120], digits28.calib.y[:120])
    calls, progress = _recorder()
    config = SearchConfig(mode="uniform_layer", epsilon=0.005, exact_limit=limit)
    result = SpatialSearch(ev, config, progress=progress).run()

    layers = _phase(calls, "spatial search")
    assert {total for _, _, _, total, _ in layers} == {2} and {e["unit"] for *_, e in layers} == {"layers"}
    dones = [done for _, _, done, _, _ in layers]
    assert dones == sorted(dones) and dones[0] == 0 and _ends(layers) == [len(layers) - 1]
    assert any(item.startswith("layer 2 of 2 (conv2): first level") for _, item, done, _, _ in layers if done == 1)
    assert layers[-1][4]["best_saved"] > 0

    combine = _phase(calls, "combining layers")
    assert calls.index(combine[0]) > calls.index(layers[-1])  # after the layers' phase ended
    assert [done for _, _, done, _, _ in combine] == list(range(len(result.points) + 1))
    assert len({total for _, _, _, total, _ in combine}) == 1 and combine[0][3] >= len(result.points)
    assert all(extra["at_most"] for *_, extra in combine) and _ends(combine) == [len(combine) - 1]
    assert combine[-1][4]["accuracy"] == result.accuracy and combine[-1][4]["saved"] == result.macs_saved


def test_the_rate_search_reports_steps_within_its_bound(trained_lenet, digits28):
    gm = insert_perforated_convs(capture(trained_lenet, (1, 1, 28, 28)).graph_module).graph_module
    ops = perforated_ops(gm)
    masks = {name: [kept_mask("uniform", op.out_hw, q, seed=0) for q in KEPT_FRACTIONS] for name, op in ops.items()}
    fixed = FixedMasks(masks)
    calls, progress = _recorder()
    config = RateSearchConfig(mask="uniform", epsilon=None, speedup=2.5)
    calib = digits28.calib
    result = GreedyRateSearch(gm, calib.x, calib.y, fixed, config, CostModel(gm), progress=progress).run()

    bound = sum(fixed.notches(name) - 1 for name in masks)  # every layer raised to its sparsest rate
    assert {(phase, total, extra["unit"], extra["at_most"]) for phase, _, _, total, extra in calls} == {
        ("rate search", bound, "steps", True)
    }
    dones = [done for _, _, done, _, _ in calls]
    assert dones == sorted(dones) and dones[0] == 0 and dones[-1] == len(result.points) - 1 < bound
    assert _ends(calls) == [len(calls) - 1]
    assert calls[-1][1] == f"stopped: {result.stop_reason}"
    assert calls[-1][4]["speedup"] == result.points[-1].speedup
    steps = [item for _, item, _, _, _ in calls if " -> kept " in item]  # one line per step taken
    assert [int(item.split(":")[0].removeprefix("step ")) for item in steps] == list(range(1, len(result.points)))
