"""Fast, exact evaluation of Spatial masks on calibration data.

The naive cost of a mask search is options x a full forward pass. Three facts make it cheaper
without changing any result:
- A mask on one layer changes nothing upstream: the dense run is cached once, and only the
  *suffix* of the graph after that layer runs again (residual inputs come from the cache).
- An image whose activations the mask never zeroes wrongly keeps its dense output exactly, so
  only images with a misprediction go through the suffix.
- Candidates are batched: their affected images run through the suffix together.

NaN or infinite outputs: the dense model's are an input error (there is nothing to keep within
a budget of); a candidate's score 0, since a mask that breaks the arithmetic is not a slightly
less accurate network (NaN would otherwise argmax to class 0 and count as a guess).

With a ``World`` of several ranks, each evaluates its share of the images and the counts every
score is made of are summed over ranks (``distributed``): all ranks see the same scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import fx

from ...distributed import SINGLE, World
from ...errors import check_finite
from ...transform.accounting import account
from ...transform.activation_cache import ActivationCache
from ...transform.capture import set_eval
from ...transform.suffix import suffix_after
from .op import SpatialConv, predicted_zero
from .rewrite import spatial_ops


@dataclass(frozen=True)
class Outcome:
    """Accuracy (fraction of calibration images right) and MACs saved per image."""

    accuracy: float
    macs_saved: float


@dataclass(frozen=True)
class Candidate:
    """A change to one layer: MACs it saves per image, the images it mispredicts on (only those
    need the suffix), and the predicted-zero positions (rows for given images)."""

    saved: float
    images: torch.Tensor
    predicted: Callable[[torch.Tensor], torch.Tensor]


@dataclass
class _Layer:
    op: SpatialConv
    node: fx.Node
    suffix: fx.GraphModule
    frontier: list[fx.Node]  # values the suffix reads besides the op output, in placeholder order
    suffix_share: float  # the suffix's share of the network's MACs


class Evaluator:
    """Scores masks of a graph module with Spatial ops against ``target`` (labels, or the
    dense model's predictions for label-free data) on images ``x``.

    ``suffix_images`` counts suffix images run, ``work`` image passes (suffixes weighted by
    their share of the MACs), both on this rank's images; ``full_passes`` counts whole-network
    passes. With ``world``, this rank keeps its share of ``x`` (``count`` is all of them).
    ``max_cache_bytes`` bounds the dense values kept at once (``ActivationCache``); None keeps
    every layer's.
    """

    def __init__(self, gm: fx.GraphModule, x: torch.Tensor, target: torch.Tensor, batch_size: int = 256,
                 world: World = SINGLE, max_cache_bytes: int | None = None):  # fmt: skip
        self.gm = set_eval(gm)
        self.world = world
        self.count = len(x)
        share = world.image_share(len(x))
        self.x, self.target = x[share], target[share]
        self.batch_size = batch_size
        self.ops = spatial_ops(gm)
        for op in self.ops.values():
            op.set_mask(torch.ones_like(op.mask))
            op.track_stats = False
        self.node_of = {gm.get_submodule(n.target).layer_name: n for n in gm.graph.nodes if n.op == "call_module"
                        and isinstance(gm.get_submodule(n.target), SpatialConv)}  # fmt: skip
        self.layers = self._layers()
        needs = {name: [layer.node, *layer.frontier] for name, layer in self.layers.items()}
        self.cache = ActivationCache(self.gm, self.x, needs, batch_size, max_cache_bytes)
        self._dense_logits = self.cache.logits
        check_finite(self._dense_logits, f"the outputs of the dense model on the {len(self.x)} calibration images")
        self.dense_correct = self._correct(self._dense_logits)
        self._dense_hits = world.count(int(self.dense_correct.sum()))
        self.dense_accuracy = self._dense_hits / self.count
        self.suffix_images = 0
        self.full_passes = 1
        self.work = float(len(self.x))

    @property
    def layer_names(self) -> list[str]:
        return list(self.ops)

    # --- single-layer evaluation -------------------------------------------------------------

    def dense_output(self, layer: str) -> torch.Tensor:
        """The layer's dense output on this rank's images."""
        return self._dense_values(layer)[0]

    def _dense_values(self, layer: str) -> list[torch.Tensor]:
        """The layer's output and its suffix's frontier, dense. Recording them again (a group
        the budget dropped) runs the network with every op dense; the masks then go back."""
        if self.cache.holds(layer):
            return self.cache.values(layer)
        installed = {name: op.mask.clone() for name, op in self.ops.items()}
        self.install({})
        try:
            return self.cache.values(layer)
        finally:
            self.install(installed)

    def evaluate(self, layer: str, candidates: Iterable[Candidate]) -> list[Outcome]:
        """Outcomes of candidates on ``layer`` alone (every other layer dense). Every rank gives
        the same candidates (their images are its own)."""
        candidates = list(candidates)
        jobs = [(k, c.images, c.predicted(c.images)) for k, c in enumerate(candidates) if len(c.images)]
        changed = torch.zeros(2, len(candidates), dtype=torch.int64)  # correct images gained; broken images
        for k, images, correct, finite in self._run_suffix(layer, jobs):
            changed[0, k] += correct - int(self.dense_correct[images].sum())
            changed[1, k] += not finite
        gained, broken = self.world.sum(changed).tolist()
        return [Outcome(0.0 if broken[k] else (self._dense_hits + gained[k]) / self.count, candidate.saved)
                for k, candidate in enumerate(candidates)]  # fmt: skip

    def best_case_accuracy(self, images: torch.Tensor) -> float:
        """The highest accuracy a change can reach if it touches only ``images`` (this rank's)."""
        wrong_now = self.world.count(len(images) - int(self.dense_correct[images].sum()))
        return (self._dense_hits + wrong_now) / self.count

    def saved_per_image(self, predicted: int, macs_per_position: float) -> float:
        """MACs saved per image when this rank's images have ``predicted`` positions predicted."""
        return float(self.world.count(predicted)) / self.count * macs_per_position

    def candidate(self, layer: str, mask: torch.Tensor) -> Candidate:
        """The candidate that installs full ``mask`` (C, Hp, Wp) on ``layer``."""
        op, dense = self.ops[layer], self.dense_output(layer)
        pred = predicted_zero(dense, mask, op.patch_size, op.edge, op.channel_group)
        wrong = (pred & (dense > 0)).flatten(1).any(dim=1).nonzero().flatten()
        return Candidate(self.saved_per_image(int(pred.sum()), op.macs_per_position), wrong, lambda images: pred[images])

    def totals(self) -> tuple[int, float]:
        """Suffix images run and work done (image passes, a partial recording pass of the cache
        counted whole), over all ranks."""
        work = self.work + (self.cache.passes - 1) * len(self.x)
        both = self.world.sum(torch.tensor([float(self.suffix_images), work], dtype=torch.float64))
        return int(both[0]), float(both[1])

    def evaluate_mask(self, layer: str, mask: torch.Tensor) -> Outcome:
        """The outcome of one full mask on ``layer`` alone."""
        return self.evaluate(layer, [self.candidate(layer, mask)])[0]

    # --- whole-network evaluation ------------------------------------------------------------

    def evaluate_network(self, masks: dict[str, torch.Tensor]) -> Outcome:
        """Install ``masks`` (layer -> full mask; others all ones), run every image through the
        whole network and measure accuracy and MACs saved on the data. Masks stay installed."""
        self.install(masks)
        for op in self.ops.values():
            op.reset_stats()
            op.track_stats = True
        try:
            logits = self._forward(self.gm, (self.x,))
        finally:
            for op in self.ops.values():
                op.track_stats = False
        self.full_passes += 1
        self.work += len(self.x)
        ops = list(self.ops.values())
        counts = [int(self._correct(logits).sum()), int(not logits.isfinite().all())]
        counts += [int(n) for op in ops for n in (op.stats.predicted, op.stats.images)]
        counts = self.world.sum(torch.tensor(counts, dtype=torch.int64)).tolist()
        saved = sum(counts[2 + 2 * i] / counts[3 + 2 * i] * op.macs_per_position for i, op in enumerate(ops))
        return Outcome(0.0 if counts[1] else counts[0] / self.count, saved)

    def install(self, masks: dict[str, torch.Tensor]) -> None:
        for name, op in self.ops.items():
            op.set_mask(masks[name] if name in masks else torch.ones_like(op.mask))

    # --- internals -----------------------------------------------------------------------------

    def _correct(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=1) == self.target

    def _forward(self, module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        outputs = []
        with torch.no_grad():
            for start in range(0, len(inputs[0]), self.batch_size):
                out = module(*(t[start : start + self.batch_size] for t in inputs))
                outputs.append(out[0] if isinstance(out, (tuple, list)) else out)
        return torch.cat(outputs)

    def _run_suffix(self, name: str, jobs):
        """(candidate, images, correct count, all outputs finite) for each job, running affected
        images in batches."""
        layer = self.layers[name]
        dense, *frontier_values = self._dense_values(name)
        pending = [(k, images, dense[images].masked_fill(rows, 0.0)) for k, images, rows in jobs]
        start = 0
        while start < len(pending):
            group, size = [], 0
            while start < len(pending) and (not group or size + len(pending[start][1]) <= self.batch_size):
                group.append(pending[start])
                size += len(pending[start][1])
                start += 1
            images = torch.cat([g[1] for g in group])
            op_out = torch.cat([g[2] for g in group])
            frontier = [values[images] for values in frontier_values]
            with torch.no_grad():
                logits = self._forward(layer.suffix, (op_out, *frontier))
            correct = logits.argmax(dim=1) == self.target[images]
            finite = logits.isfinite().flatten(1).all(dim=1)
            self.suffix_images += len(images)
            self.work += len(images) * layer.suffix_share
            offset = 0
            for k, imgs, _ in group:
                rows = slice(offset, offset + len(imgs))
                yield k, imgs, int(correct[rows].sum()), bool(finite[rows].all())
                offset += len(imgs)

    def _layers(self) -> dict[str, _Layer]:
        """Each op's suffix: the graph after it, and what that graph reads besides the op."""
        total = account(self.gm).total_macs or 1
        layers = {}
        for name, node in self.node_of.items():
            suffix, frontier = suffix_after(self.gm, node)
            layers[name] = _Layer(self.ops[name], node, suffix, frontier, account(suffix).total_macs / total)
        return layers
