"""The crossover rule: a transformed layer ships only where its kernel is faster than the dense
layer it replaced, at the artifact's target and batch size.

Each transformed layer and its dense layer (``op.dense_layer()``) are compiled alone and timed
on the activations that reach the layer in the model (zero prediction depends on them; a
residual input is fed as the constant it was). Timings are cached on disk
(``codegen.measure.TimingCache``), so a rerun pays for nothing twice. A job leaves a layer
below the crossover dense, unless the accuracy budget needs its kernel
(:func:`leave_dense_within_budget`), and its report says so.

The rule chooses between the two kernels the artifact can hold. Beside them each layer's dense
form also runs on eager PyTorch (on the target's device, where it is here), and the report sets
the transformed kernel against the faster of the two dense times: a layer that beats this tool's
dense code but not PyTorch's makes the artifact no faster than the model a user started with.

    timer = LayerTimer(target="llvm", cache="out/layer-timings.json")
    speeds = layer_speeds(gm, calib_images[:1], timer)
    slower = [name for name, speed in speeds.items() if speed.below_crossover]
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import fx, nn

from ..codegen.measure import NUMBER, REPEAT
from ..ops.base import CostedOp
from ..transform.layers import tensor_shape
from ..transform.suffix import record_op_inputs
from .runners import BackendUnavailable, TVMSettings, make_runner


@dataclass(frozen=True)
class LayerTimer:
    """Where layers are timed: compile target, tuning budget (trials per module, records
    reused) and the timing cache file (None: in memory)."""

    target: str = "llvm"
    tune_trials: int = 0
    records: str | Path | None = None
    cache: str | Path | None = None

    def timing_cache(self):
        from ..codegen.measure import TimingCache

        return TimingCache(self.cache)


@dataclass(frozen=True)
class LayerSpeed:
    """One transformed layer against its dense layer, each compiled alone."""

    layer: str
    kind: str
    dense_ms: float
    transformed_ms: float
    theoretical: float  # dense MACs / performed MACs (inf: all of the layer's work is skipped)
    eager_ms: float | None = None  # the dense layer on eager PyTorch; None: not timed here

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.transformed_ms

    @property
    def fastest_dense_ms(self) -> float:
        """The dense layer's time on the faster of this tool's code and eager PyTorch."""
        return self.dense_ms if self.eager_ms is None else min(self.dense_ms, self.eager_ms)

    @property
    def speedup_vs_fastest(self) -> float:
        return self.fastest_dense_ms / self.transformed_ms

    @property
    def below_crossover(self) -> bool:
        return self.transformed_ms >= self.dense_ms

    def to_dict(self) -> dict:
        return {"layer": self.layer, "kind": self.kind, "dense_ms": self.dense_ms, "transformed_ms": self.transformed_ms,
                "speedup": self.speedup, "theoretical": self.theoretical if math.isfinite(self.theoretical) else None,
                "below_crossover": self.below_crossover, "eager_ms": self.eager_ms,
                "speedup_vs_fastest": self.speedup_vs_fastest}  # fmt: skip


class WithResidual(nn.Module):
    """A layer that takes a residual input, with that input fixed: timeable alone."""

    def __init__(self, layer: nn.Module, residual: torch.Tensor):
        super().__init__()
        self.layer = layer
        self.register_buffer("residual", residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x, self.residual)


def layer_speeds(gm: fx.GraphModule, images: torch.Tensor, timer: LayerTimer) -> dict[str, LayerSpeed]:
    """Time every inserted op of ``gm`` that saves work on ``images`` (one batch of the size the
    model is compiled for) against its dense layer; keyed by layer name."""
    ops = {node.name: gm.get_submodule(node.target) for node in gm.graph.nodes
           if node.op == "call_module" and isinstance(gm.get_submodule(node.target), CostedOp)}  # fmt: skip
    if not ops:
        return {}
    inputs = record_op_inputs(gm, ops, images)
    nodes = {node.name: node for node in gm.graph.nodes}
    cache = timer.timing_cache()
    speeds = {}
    for node_name, op in ops.items():
        args = inputs.get(node_name)
        if args is None:
            continue
        cost = op.cost(tuple(args[0].shape), (len(args[0]), *tensor_shape(nodes[node_name])[1:]))
        if cost.performed_macs >= cost.dense_macs:
            continue  # saves nothing: runs as the dense layer already
        dense = op.dense_layer()
        timed = [time_layer(module, args, timer, cache) for module in (dense, op)]
        # A map smaller than a patch may be predicted zero from padding alone: nothing is computed.
        theoretical = cost.dense_macs / cost.performed_macs if cost.performed_macs else math.inf
        speeds[op.layer_name] = LayerSpeed(
            op.layer_name, op.kind, *timed, theoretical, eager_layer_ms(dense, args, timer)
        )
    return speeds


def eager_layer_ms(module: nn.Module, args: tuple[torch.Tensor, ...], timer: LayerTimer,
                   number: int = NUMBER, repeat: int = REPEAT) -> float | None:  # fmt: skip
    """Median milliseconds of ``module`` on eager PyTorch on ``args`` (as ``time_layer`` feeds
    them), on the target's device, over ``repeat`` timings of ``number`` runs each after a
    warm-up; None where PyTorch has no such device here."""
    timed = WithResidual(module, args[1]) if len(args) > 1 else module
    try:
        run = make_runner("eager", timed, args[0], TVMSettings(timer.target))
    except BackendUnavailable:
        return None
    for _ in range(number):
        run()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            run()
        samples.append((time.perf_counter() - start) / number)
    return 1e3 * statistics.median(samples)


def time_layer(module: nn.Module, args: tuple[torch.Tensor, ...], timer: LayerTimer, cache) -> float:
    """Milliseconds of ``module`` compiled alone and run on ``args`` (its recorded inputs: the
    activation, and a residual input fed as a constant), through ``cache``."""
    x = args[0]
    timed = WithResidual(module, args[1]) if len(args) > 1 else module
    was_tracking = getattr(module, "track_stats", None)
    if was_tracking is not None:
        module.track_stats = False  # time the kernel, not the counters
    try:
        return cache.get_or_measure(timed, tuple(x.shape), timer.target, timer.tune_trials, timer.records, x.numpy())
    finally:
        if was_tracking is not None:
            module.track_stats = was_tracking


@dataclass(frozen=True)
class CrossoverResult:
    """What the rule found: each transformed layer's speed, which were left dense, and which kept
    their transformed kernel though not faster, because the plan lost too much accuracy without it."""

    target: str
    batch: int
    speeds: dict[str, LayerSpeed]
    kept_for_budget: tuple[str, ...] = ()

    @property
    def below_crossover(self) -> list[str]:
        return [name for name, speed in self.speeds.items() if speed.below_crossover]

    @property
    def left_dense(self) -> list[str]:
        return [name for name in self.below_crossover if name not in self.kept_for_budget]

    def to_dict(self) -> dict:
        return {"target": self.target, "batch": self.batch, "left_dense": self.left_dense,
                "kept_for_budget": list(self.kept_for_budget),
                "layers": [speed.to_dict() for speed in self.speeds.values()]}  # fmt: skip


def check_crossover(gm: fx.GraphModule, images: torch.Tensor, timer: LayerTimer) -> CrossoverResult:
    """``layer_speeds`` of ``gm`` on ``images`` (one compiled batch) as a ``CrossoverResult``."""
    return CrossoverResult(timer.target, len(images), layer_speeds(gm, images, timer))


def leave_dense_within_budget(checked: CrossoverResult, make_dense: Callable[[str, bool], None],
                              budget_holds: Callable[[], bool]) -> CrossoverResult:  # fmt: skip
    """Leave dense the layers below the crossover, keeping the accuracy budget the search kept.

    A plan is not monotone in its layers: making one dense can lose accuracy. So after
    ``make_dense(layer, True)`` for every layer below the crossover, ``budget_holds()`` (a pass
    over the calibration split) is asked; while it fails, the layer closest to the crossover
    takes its transformed kernel back (``make_dense(layer, False)``, the cheapest in time) and
    the budget is asked again. With every layer back it is the searched plan, which held."""
    below = checked.below_crossover
    for name in below:
        make_dense(name, True)
    kept: list[str] = []
    for name in sorted(below, key=lambda n: -checked.speeds[n].speedup):  # closest to 1x first
        if budget_holds():
            break
        make_dense(name, False)
        kept.append(name)
    return replace(checked, kept_for_budget=tuple(kept))
