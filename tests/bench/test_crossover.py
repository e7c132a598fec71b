import json

import pytest
import torch
from torch import nn

from sparsify_cnn import models
from sparsify_cnn.bench.crossover import (
    CrossoverResult,
    LayerSpeed,
    LayerTimer,
    WithResidual,
    check_crossover,
    eager_layer_ms,
    layer_speeds,
    leave_dense_within_budget,
)
from sparsify_cnn.codegen import measure
from sparsify_cnn.techniques.perforation.op import PerforatedConv
from sparsify_cnn.techniques.perforation.rewrite import PerforationConfig, insert_perforated_convs, perforated_ops
from sparsify_cnn.techniques.spatial.op import SpatialConv
from sparsify_cnn.transform.capture import capture

pytestmark = pytest.mark.tvm  # compiles with TVM: `pytest -m 'not tvm'` leaves it out


@pytest.fixture
def perforated():
    torch.manual_seed(0)
    gm = capture(models.build("lenet").eval(), (1, 1, 28, 28)).graph_module
    gm = insert_perforated_convs(gm, PerforationConfig()).graph_module
    ops = perforated_ops(gm)
    kept = torch.zeros(ops["conv2"].out_hw, dtype=torch.bool)
    kept[::2, ::2] = True
    ops["conv2"].set_kept(kept)  # conv1 stays all kept: it saves nothing and is not timed
    return gm


def fake_times(times_by_type, calls):
    def measure_ms(module, input_shape, target="llvm", tune_trials=0, records=None, example=None, **_):
        calls.append((type(module).__name__, tuple(input_shape), example is not None))
        return times_by_type[type(module)]

    return measure_ms


def test_layers_that_save_work_are_timed_against_their_dense_layer_and_cached(perforated, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(measure, "measure_ms", fake_times({nn.Conv2d: 2.0, PerforatedConv: 0.5}, calls))
    timer = LayerTimer(cache=tmp_path / "timings.json")
    speeds = layer_speeds(perforated, torch.randn(1, 1, 28, 28), timer)
    assert list(speeds) == ["conv2"]
    speed = speeds["conv2"]
    assert (speed.dense_ms, speed.transformed_ms, speed.speedup, speed.below_crossover) == (2.0, 0.5, 4.0, False)
    assert speed.theoretical == pytest.approx(4.0)
    assert calls == [("Conv2d", (1, 20, 12, 12), True), ("PerforatedConv", (1, 20, 12, 12), True)]
    assert len(json.loads((tmp_path / "timings.json").read_text())["timings"]) == 2
    layer_speeds(perforated, torch.randn(1, 1, 28, 28), timer)  # other activations: timed again
    assert len(calls) == 4
    x = torch.ones(1, 1, 28, 28)
    layer_speeds(perforated, x, timer)
    layer_speeds(perforated, x, timer)  # same activations: read back
    assert len(calls) == 6


def test_a_kernel_that_is_not_faster_is_below_the_crossover(perforated, monkeypatch):
    monkeypatch.setattr(measure, "measure_ms", fake_times({nn.Conv2d: 1.0, PerforatedConv: 1.0}, []))
    result = check_crossover(perforated, torch.randn(1, 1, 28, 28), LayerTimer())
    assert result.left_dense == ["conv2"] and result.batch == 1
    assert result.to_dict()["layers"][0]["below_crossover"] is True


def test_each_layer_is_set_against_the_faster_of_tvm_dense_and_eager(perforated, monkeypatch):
    """The verdict stays this tool's dense kernel against the transformed one (what the artifact
    can hold); the report also sets the kernel against eager PyTorch's dense layer when faster."""
    from sparsify_cnn.bench import crossover
    from sparsify_cnn.report.render import crossover_markdown

    monkeypatch.setattr(measure, "measure_ms", fake_times({nn.Conv2d: 2.0, PerforatedConv: 0.5}, []))
    timed = []
    monkeypatch.setattr(crossover, "eager_layer_ms", lambda module, args, timer: timed.append(module) or 0.8)
    result = check_crossover(perforated, torch.randn(1, 1, 28, 28), LayerTimer())
    speed = result.speeds["conv2"]
    assert [type(m) for m in timed] == [nn.Conv2d]  # the dense layer, not the perforated one
    assert (speed.eager_ms, speed.fastest_dense_ms, speed.speedup, speed.speedup_vs_fastest) == (0.8, 0.8, 4.0, 1.6)
    assert not speed.below_crossover
    [row] = [line for line in crossover_markdown(result.to_dict()) if line.startswith("| `conv2`")]
    assert "| 2.000 | 0.800 | 0.500 | 4.00x | 1.60x |" in row
    slower = LayerSpeed("a", "conv", 2.0, 1.0, 2.0, eager_ms=None)
    assert slower.speedup_vs_fastest == slower.speedup == 2.0  # eager not timed: this tool's dense only


def test_eager_layer_time_runs_the_layer_on_its_recorded_input():
    conv, calls = nn.Conv2d(2, 3, 3), []
    conv.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    ms = eager_layer_ms(conv, (torch.randn(1, 2, 8, 8),), LayerTimer(), number=2, repeat=3)
    assert ms > 0 and set(calls) == {torch.Size([1, 2, 8, 8])} and len(calls) >= 2 + 2 * 3
    assert (
        eager_layer_ms(conv, (torch.randn(1, 2, 8, 8),), LayerTimer(target="cuda")) is None or torch.cuda.is_available()
    )


def test_real_compiled_timings_of_a_perforated_layer():
    gm = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1))
    gm = insert_perforated_convs(capture(gm, (1, 8, 16, 16)).graph_module, PerforationConfig()).graph_module
    op = next(iter(perforated_ops(gm).values()))
    kept = torch.zeros(op.out_hw, dtype=torch.bool)
    kept[::2, ::2] = True
    op.set_kept(kept)
    [speed] = layer_speeds(gm, torch.randn(1, 8, 16, 16), LayerTimer()).values()
    assert speed.dense_ms > 0 and speed.transformed_ms > 0 and speed.theoretical == pytest.approx(4.0)
    assert speed.eager_ms > 0


def test_a_layer_with_a_residual_input_is_timed_with_that_input_fixed():
    op = SpatialConv(nn.Conv2d(4, 4, 3, padding=1), (8, 8), layer_name="block")
    residual = torch.randn(1, 4, 8, 8)
    wrapped, x = WithResidual(op, residual), torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(wrapped(x), op(x, residual))
    dense = WithResidual(op.dense_layer(), residual)
    torch.testing.assert_close(dense(x), op.dense(x, residual))


def test_a_layer_whose_whole_map_is_predicted_from_padding_is_all_skipped(monkeypatch):
    """A 1x1 map under 2x2 patches whose pattern marks only padding: nothing is computed, so the
    theoretical speedup is unbounded (reported as 'all skipped', not a division by zero)."""
    from sparsify_cnn.report.render import crossover_markdown
    from sparsify_cnn.techniques.spatial.rewrite import insert_spatial_ops, spatial_ops

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.relu(self.conv(x)).flatten(1)

    gm = insert_spatial_ops(capture(Tiny().eval(), (1, 3, 3, 3)).graph_module).graph_module
    op = spatial_ops(gm)["conv"]
    mask = torch.zeros_like(op.mask)
    mask[:, 1, 1] = True  # the only computed position lies in the padding
    op.set_mask(mask)
    monkeypatch.setattr(measure, "measure_ms", fake_times({type(op.dense_layer()): 1.0, SpatialConv: 0.5}, []))
    result = check_crossover(gm, torch.randn(1, 3, 3, 3), LayerTimer())
    assert result.speeds["conv"].theoretical == float("inf")
    row = result.to_dict()["layers"][0]
    assert row["theoretical"] is None and json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert "all skipped" in "\n".join(crossover_markdown(result.to_dict()))


def _result(**speedups):
    """A crossover result whose layers run at the given speedups over their dense layers."""
    speeds = {name: LayerSpeed(name, "conv", 1.0, 1.0 / s, 2.0) for name, s in speedups.items()}
    return CrossoverResult("llvm", 1, speeds)


@pytest.mark.parametrize("holds_after, kept", [(0, []), (1, ["c"]), (2, ["c", "a"]), (99, ["c", "a"])])
def test_layers_below_the_crossover_go_dense_while_the_budget_holds(holds_after, kept):
    """The budget is asked after all slow layers go dense; while it fails, the layer closest to
    the crossover (the cheapest to keep) takes its kernel back."""
    dense, checks = {}, []

    def budget_holds():
        checks.append(dict(dense))
        return len(checks) > holds_after

    checked = leave_dense_within_budget(_result(a=0.5, b=2.0, c=0.9), dense.__setitem__, budget_holds)
    assert checked.kept_for_budget == tuple(kept)
    assert checked.left_dense == [n for n in ("a", "c") if n not in kept]
    assert dense == {"a": "a" not in kept, "c": "c" not in kept}  # b is faster: never touched
    assert checks[0] == {"a": True, "c": True}
    assert len(checks) == min(holds_after + 1, 2)  # with every slow layer back: the searched plan, not asked


def test_the_budget_is_not_asked_when_no_layer_is_below_the_crossover():
    checked = leave_dense_within_budget(_result(a=1.5), lambda *_: pytest.fail("no layer changes"),
                                        lambda: pytest.fail("no pass"))  # fmt: skip
    assert checked.left_dense == [] and checked.kept_for_budget == ()
