"""Choose per-layer perforation rates greedily (Figurnov et al., section 3.3).

From every layer dense, each step tries raising each layer's rate by one notch on the kept-
fraction grid and takes the one with the smallest (L - L0) / (T0 - T): the loss it adds per
unit of time it saves, both against the original network. Every step is an operating point.
The search stops at a target speedup, or before the accuracy loss would exceed epsilon.

On networks of many layers a step may take several: the ``layers_per_step`` best by that ratio
(each scored with the others as they are), when the network with all of them raised together
still meets epsilon, checked on the whole network; else the best alone, as the paper's step.
T is a sum over layers, so the time saved by several is the sum of each's: only the loss needs
the check. Steps then cost a record pass and a sweep over the layers per several layers.

Only the suffix of the graph after a changed layer is re-run: one pass per step records every
perforated op's input, and a candidate runs its op and the rest of the network from there.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx

from ...config import Config
from ...distributed import SINGLE, World
from ...errors import InputError, check_finite
from ...progress import Progress, silent
from ...search.accuracy_budget import accuracy_floor, check_epsilon
from ...search.checkpoint import Checkpoint
from ...transform.accounting import account
from ...transform.capture import set_eval
from ...transform.suffix import Recorder, suffix_after
from .masks import KEPT_FRACTIONS, MASK_TYPES
from .op import PerforatedConv
from .rewrite import perforated_ops

COSTS = ("macs", "measured")


@dataclass(frozen=True)
class RateSearchConfig(Config):
    """How to choose rates.

    mask: how each layer's kept positions are chosen ("uniform", "grid", "pooling", "impact").
    cost: what T is: network MACs, or the measured time of the compiled layers.
    layers_per_step: at most this many layers raised per step (None: one per 16 perforated
        layers, at least 1; 1: the paper's greedy).
    speedup: stop once the network is this much faster (by the cost); None: no speed target.
    epsilon: never take a step that loses more accuracy than this on the calibration split
        (absolute, or relative to the dense accuracy); None: no accuracy bound.
    """

    mask: str = "impact"
    cost: str = "macs"
    speedup: float | None = None
    layers_per_step: int | None = None
    epsilon: float | None = 0.01
    epsilon_kind: str = "absolute"
    batch_size: int = 256
    seed: int = 0
    version: int = 1

    def __post_init__(self):
        if self.mask not in MASK_TYPES:
            raise InputError(f"unknown mask type '{self.mask}'; choose one of: {', '.join(MASK_TYPES)}")
        if self.cost not in COSTS:
            raise InputError(f"unknown cost '{self.cost}'; choose one of: {', '.join(COSTS)}")
        if self.speedup is not None and self.speedup <= 1:
            raise InputError(f"target speedup must be > 1, got {self.speedup}")
        check_epsilon(self.epsilon, self.epsilon_kind)
        if self.batch_size < 1:
            raise InputError("batch size must be >= 1")
        if self.layers_per_step is not None and self.layers_per_step < 1:
            raise InputError(f"layers per step must be >= 1, got {self.layers_per_step}")


@dataclass(frozen=True)
class RatePoint:
    """The network after one greedy step."""

    step: int
    layers: tuple[str, ...]  # the layers whose rates this step raised, best first (none: the dense start)
    kept: dict[str, float]  # layer -> kept fraction
    notches: dict[str, int]  # layer -> how many notches its rate was raised
    macs: int  # per image
    cost: float  # T: MACs, or measured milliseconds
    speedup: float  # T0 / T
    loss: float
    accuracy: float

    @property
    def layer(self) -> str | None:
        """The step's best layer (None: the dense start)."""
        return self.layers[0] if self.layers else None


@dataclass
class RateSearchResult:
    kept: dict[str, torch.Tensor]  # layer -> kept-position mask of the chosen point
    points: list[RatePoint]
    chosen: int  # index of the chosen point
    dense_accuracy: float
    dense_loss: float
    dense_macs: int
    cost_unit: str  # "MACs" or "ms"
    stop_reason: str
    candidates: int = 0  # candidate networks evaluated
    seconds: float = 0.0
    ranks: int = 1  # processes the calibration images were shared by (torchrun)
    history: list[dict[str, torch.Tensor]] = field(default_factory=list, repr=False)  # masks at each point

    @property
    def point(self) -> RatePoint:
        return self.points[self.chosen]

    def masks_at(self, point: RatePoint) -> dict[str, torch.Tensor]:
        """The kept-position masks of every layer at an operating point."""
        return self.history[point.step]


class CostModel:
    """T of a network state: its MACs per image (``measure=None``), or the measured time of the
    rest of the network (the dense network's time less its layers' dense times) plus each
    layer's measured time at its rate. Layers timed alone can add up to more than the network
    timed whole (noise, a busy machine): the rest then counts as nothing, so T stays positive
    and the dense T0 is the layers' sum."""

    def __init__(self, gm: fx.GraphModule, measure: Callable[[PerforatedConv, torch.Tensor], float] | None = None,
                 dense_ms: float | None = None):  # fmt: skip
        self.ops = perforated_ops(gm)
        self.measure = measure
        self.dense_macs = account(gm).total_macs
        self.unit = "MACs" if measure is None else "ms"
        if measure is not None:
            self._layer_dense = {name: measure(op, torch.ones(op.out_hw, dtype=torch.bool)) for name, op in self.ops.items()}
            layers = sum(self._layer_dense.values())
            self._rest = max(0.0, (dense_ms if dense_ms is not None else layers) - layers)
            self.dense_total = self.total({})  # summed as every state is, so T0 / T is exactly 1 at dense
        else:
            self.dense_total = float(self.dense_macs)

    def macs(self, kept: dict[str, torch.Tensor]) -> int:
        saved = sum(int((~mask).sum()) * self.ops[name].macs_per_position for name, mask in kept.items())
        return self.dense_macs - saved

    def total(self, kept: dict[str, torch.Tensor]) -> float:
        if self.measure is None:
            return float(self.macs(kept))
        total = self._rest
        for name, dense in self._layer_dense.items():
            mask = kept.get(name)
            total += dense if mask is None or bool(mask.all()) else self.measure(self.ops[name], mask)
        return total


class FixedMasks:
    """Each layer's kept-position masks from dense to sparsest, one per notch, chosen before
    the search (repeated kept counts are dropped)."""

    def __init__(self, masks: dict[str, list[torch.Tensor]]):
        self.masks = {name: notch_masks(layer_masks) for name, layer_masks in masks.items()}

    def notches(self, layer: str) -> int:
        return len(self.masks[layer])

    def mask(self, layer: str, notch: int) -> torch.Tensor:
        return self.masks[layer][notch]


class GreedyRateSearch:
    """The greedy procedure over the perforated ops of ``gm`` on images ``x``.

    ``masks`` gives each layer's next kept-position mask.
    ``labels``: score top-1 against them and use cross entropy as L; ``None``: score
    agreement with the dense model and use the KL divergence to its output as L.
    With a ``world`` of several ranks, each runs its share of ``x``; L and the correct images
    are summed over ranks, so every rank takes the same steps.
    """

    def __init__(
        self,
        gm: fx.GraphModule,
        x: torch.Tensor,
        labels: torch.Tensor | None,
        masks: FixedMasks,
        config: RateSearchConfig,
        cost: CostModel,
        checkpoint: Checkpoint | None = None,
        progress: Progress | None = None,
        world: World = SINGLE,
    ):
        self.gm = set_eval(gm)
        self.world = world
        self.count = len(x)
        share = world.image_share(len(x))
        self.x = x = x[share]
        labels = labels[share] if labels is not None else None
        self.config = config
        self.cost = cost
        self.store = checkpoint or Checkpoint(None)
        self.progress = progress or silent
        self.ops = perforated_ops(gm)
        if not self.ops:
            raise InputError("the model has no perforated convs to choose rates for")
        self.node_of = {gm.get_submodule(n.target).layer_name: n for n in gm.graph.nodes if n.op == "call_module"
                        and isinstance(gm.get_submodule(n.target), PerforatedConv)}  # fmt: skip
        self.masks = masks
        # Each step raises one layer one notch: the steps there can be at most.
        self.max_steps = sum(masks.notches(name) - 1 for name in self.ops)
        self.suffixes = {name: suffix_after(gm, node) for name, node in self.node_of.items()}
        for op in self.ops.values():
            op.set_kept(torch.ones(op.out_hw, dtype=torch.bool))
        self.dense_logits = self._forward(self.gm, (x,))
        check_finite(self.dense_logits, f"the outputs of the dense model on the {self.count} calibration images")
        self.labels = labels
        self.target = labels if labels is not None else self.dense_logits.argmax(dim=1)
        self.candidates = 0
        self.layers_per_step = config.layers_per_step or max(1, -(-len(self.ops) // 16))

    def run(self) -> RateSearchResult:
        start = time.perf_counter()
        config = self.config
        notch = {name: 0 for name in self.ops}
        current = {name: torch.ones(op.out_hw, dtype=torch.bool) for name, op in self.ops.items()}
        dense_loss, dense_accuracy = self._score(self.dense_logits)
        floor = self._accuracy_floor(dense_accuracy)
        points = [self._point(0, (), notch, current, dense_loss, dense_accuracy)]
        history = [dict(current)]
        stop = "every layer reached the sparsest rate"
        step = 0
        self._report("dense model scored", 0, accuracy=dense_accuracy)
        while True:
            if config.speedup is not None and points[-1].speedup >= config.speedup:
                stop = f"reached the target speedup {config.speedup:g}x"
                break
            step += 1
            self._install(current)
            key = f"step{step}:" + ",".join(f"{name}={n}" for name, n in notch.items())
            record = self.store.get(key)
            if record is None:
                record = self._step(step, notch, current, dense_loss, floor)
                self.store.put(key, record)
            if record["layer"] is None:
                stop = record["reason"]
                break
            layers = tuple(record.get("layers", [record["layer"]]))
            for layer in layers:
                if layer not in notch or notch[layer] + 1 >= self.masks.notches(layer) or layers.count(layer) > 1:
                    raise InputError(f"checkpoint record '{key}' takes layer '{layer}' to a rate this search does "
                                     "not have; remove the checkpoint or pass --no-resume")  # fmt: skip
            current = {**current, **{layer: self.masks.mask(layer, notch[layer] + 1) for layer in layers}}
            for layer in layers:
                notch[layer] += 1
            points.append(self._point(step, layers, notch, current, record["loss"], record["accuracy"]))
            history.append(dict(current))
            raised = ", ".join(f"{layer} -> kept {points[-1].kept[layer]:.3f}" for layer in layers)
            self._report(f"step {step}: {raised}", step, speedup=points[-1].speedup, accuracy=record["accuracy"])
        self._report(f"stopped: {stop}", len(points) - 1, end=True,
                     speedup=points[-1].speedup, accuracy=points[-1].accuracy)  # fmt: skip
        self.store.flush()
        self._install(current)
        return RateSearchResult(
            kept=current,
            points=points,
            chosen=len(points) - 1,
            dense_accuracy=dense_accuracy,
            dense_loss=dense_loss,
            dense_macs=self.cost.dense_macs,
            cost_unit=self.cost.unit,
            stop_reason=stop,
            candidates=self.candidates,
            seconds=time.perf_counter() - start,
            history=history,
            ranks=self.world.size,
        )

    # --- one step ----------------------------------------------------------------------------

    def _step(self, step: int, notch: dict[str, int], current: dict[str, torch.Tensor], dense_loss: float,
              floor: float | None) -> dict:  # fmt: skip
        """Evaluate raising each layer by one notch; the cheapest admissible one, or why none."""
        inputs, frontiers = self._record()
        t_now = self.cost.total(current)
        admissible, reasons = [], []  # (ratio, order, record, next mask)
        for i, (name, n) in enumerate(notch.items()):
            if n + 1 >= self.masks.notches(name):
                continue
            self._report(f"step {step}: trying {name} ({i + 1} of {len(notch)} layers)", step - 1)
            trial = {**current, name: self.masks.mask(name, n + 1)}
            t_trial = self.cost.total(trial)
            if t_trial >= t_now:
                reasons.append(f"{name}: not faster at the next rate")
                continue
            scored = self._candidate(name, trial[name], inputs[name], frontiers[name])
            if scored is None:
                reasons.append(f"{name}: NaN or infinite outputs at the next rate")
                continue
            loss, accuracy = scored
            if floor is not None and accuracy < floor:
                reasons.append(f"{name}: accuracy {100 * accuracy:.2f}% below the budget")
                continue
            ratio = (loss - dense_loss) / (self.cost.dense_total - t_trial)
            admissible.append((ratio, i, {"layer": name, "ratio": ratio, "loss": loss, "accuracy": accuracy}, trial[name]))
        if admissible:
            admissible.sort(key=lambda item: item[:2])  # ties: the earlier layer, as the one-layer step took
            return self._together(admissible, current, floor) or admissible[0][2]
        if not reasons:
            return {"layer": None, "reason": "every layer reached the sparsest rate"}
        if all("budget" in r for r in reasons):
            return {"layer": None, "reason": "every next step exceeds the accuracy budget"}
        return {"layer": None, "reason": "no next step is admissible (" + "; ".join(reasons) + ")"}

    def _together(self, admissible: list, current: dict[str, torch.Tensor], floor: float | None) -> dict | None:
        """The step's best layers raised together (at most ``layers_per_step``, and no more than
        reach the target speedup), when the whole network still meets the budget; else None."""
        taken, trial = [], dict(current)
        for _, _, record, mask in admissible[: self.layers_per_step]:
            if self.config.speedup is not None and self.cost.dense_total / self.cost.total(trial) >= self.config.speedup:
                break
            taken.append(record)
            trial[record["layer"]] = mask
        if len(taken) < 2:
            return None
        self._install(trial)
        try:
            logits = self._forward(self.gm, (self.x,))
        finally:
            self._install(current)
        self.candidates += 1
        if self.world.count(not bool(logits.isfinite().all())):
            return None
        loss, accuracy = self._score(logits)
        if floor is not None and accuracy < floor:
            return None
        return {**taken[0], "layers": [record["layer"] for record in taken], "loss": loss, "accuracy": accuracy}

    def _candidate(self, name: str, mask: torch.Tensor, op_input: torch.Tensor, frontier: list[torch.Tensor]):
        op = self.ops[name]
        before = op.kept.clone()
        op.set_kept(mask)
        try:
            with torch.no_grad():
                logits = self._forward(lambda x, *rest: self.suffixes[name][0](op(x), *rest), (op_input, *frontier))
        finally:
            op.set_kept(before)
        self.candidates += 1
        # NaN or infinite outputs (on any rank's images): no step, whatever the budget (NaN would
        # argmax to class 0 and give a NaN loss ratio, which no comparison rejects).
        broken = self.world.count(not bool(logits.isfinite().all()))
        return None if broken else self._score(logits)

    def _record(self):
        """One pass at the current state: each op's input and the values its suffix reads."""
        keep = set()
        for name, node in self.node_of.items():
            keep.add(node.args[0])
            keep.update(self.suffixes[name][1])
        values = {n: [] for n in keep}
        for start in range(0, len(self.x), self.config.batch_size):
            env = Recorder(self.gm, keep).run(self.x[start : start + self.config.batch_size])
            for n in keep:
                values[n].append(env[n])
        values = {n: torch.cat(v) for n, v in values.items()}
        inputs = {name: values[node.args[0]] for name, node in self.node_of.items()}
        frontiers = {name: [values[f] for f in self.suffixes[name][1]] for name in self.node_of}
        return inputs, frontiers

    # --- helpers -----------------------------------------------------------------------------

    def _report(self, item: str, steps_done: int, **extra) -> None:
        self.progress("rate search", item, steps_done, self.max_steps, unit="steps", at_most=True, **extra)

    def _score(self, logits: torch.Tensor) -> tuple[float, float]:
        """(L, accuracy) of logits, means over every rank's images: cross entropy and top-1
        against labels, or the KL divergence to the dense output and agreement with its
        predictions. Per-image losses are summed in float64."""
        if self.labels is not None:
            losses = F.cross_entropy(logits, self.labels, reduction="none")
        else:
            losses = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(self.dense_logits, 1), log_target=True,
                              reduction="none").sum(dim=1)  # fmt: skip
        correct = (logits.argmax(dim=1) == self.target).sum()
        loss, hits = self.world.sum(torch.stack([losses.double().sum(), correct.double()])).tolist()
        return loss / self.count, hits / self.count

    def _accuracy_floor(self, dense_accuracy: float) -> float | None:
        if self.config.epsilon is None:
            return None
        return accuracy_floor(dense_accuracy, self.config.epsilon, self.config.epsilon_kind)

    def _point(self, step: int, layers: tuple[str, ...], notch: dict[str, int], kept: dict[str, torch.Tensor],
               loss: float, accuracy: float) -> RatePoint:  # fmt: skip
        total = self.cost.total(kept)
        return RatePoint(
            step=step,
            layers=layers,
            kept={name: float(mask.float().mean()) for name, mask in kept.items()},
            notches=dict(notch),
            macs=self.cost.macs(kept),
            cost=total,
            speedup=self.cost.dense_total / total,
            loss=loss,
            accuracy=accuracy,
        )

    def _install(self, kept: dict[str, torch.Tensor]) -> None:
        for name, mask in kept.items():
            self.ops[name].set_kept(mask)

    def _forward(self, module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        outputs = []
        with torch.no_grad():
            for start in range(0, len(inputs[0]), self.config.batch_size):
                out = module(*(t[start : start + self.config.batch_size] for t in inputs))
                outputs.append(out[0] if isinstance(out, (tuple, list)) else out)
        return torch.cat(outputs)


def notch_masks(masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Masks from dense to sparsest with repeats dropped (small maps give equal counts)."""
    kept, seen = [], set()
    for mask in masks:
        count = int(mask.sum())
        if count not in seen:
            seen.add(count)
            kept.append(mask)
    return kept


__all__ = ["COSTS", "KEPT_FRACTIONS", "CostModel", "FixedMasks", "GreedyRateSearch", "RatePoint", "RateSearchConfig",
           "RateSearchResult", "notch_masks"]  # fmt: skip
