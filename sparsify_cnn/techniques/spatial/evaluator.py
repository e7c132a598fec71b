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
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from ...distributed import SINGLE, World
from ...errors import check_finite
from ...transform.accounting import account
from ...transform.activation_cache import ActivationCache
from ...transform.capture import set_eval
from ...transform.match import PoolingWindows, pooling_windows
from ...transform.suffix import suffix_after
from .op import SpatialConv, padded_size, predicted_zero
from .rewrite import spatial_ops


@dataclass(frozen=True)
class Outcome:
    """Accuracy (fraction of calibration images right) and MACs saved per image."""

    accuracy: float
    macs_saved: float


@dataclass(frozen=True)
class Box:
    """Channels x rows x columns of a map (the last three dimensions of what ``of`` slices)."""

    channels: slice = field(default_factory=lambda: slice(None))
    rows: slice = field(default_factory=lambda: slice(None))
    cols: slice = field(default_factory=lambda: slice(None))

    def of(self, t: torch.Tensor) -> torch.Tensor:
        """The box of ``t`` (..., C, H, W), a view."""
        return t[..., self.channels, self.rows, self.cols]


WHOLE = Box()


def pixel_boxes(slots: Box, p: int, h: int, w: int) -> tuple[Box, Box]:
    """The box of an H x W map that patch ``slots`` (a box of the p x p patch grid) cover, and
    the same box of the map's padded mask."""

    def span(part: slice, size: int, limit: int | None) -> slice:
        start, stop, _ = part.indices(size)
        return slice(start * p, stop * p if limit is None else min(limit, stop * p))

    hb, wb = padded_size(h, p) // p, padded_size(w, p) // p
    in_map = Box(slots.channels, span(slots.rows, hb, h), span(slots.cols, wb, w))
    in_mask = Box(slots.channels, span(slots.rows, hb, None), span(slots.cols, wb, None))
    return in_map, in_mask


def changed_box(mask: torch.Tensor, p: int, channel_group: int, hw) -> tuple[Box, Box]:
    """``pixel_boxes`` of the smallest box of patches (whole channel groups) where ``mask``
    leaves a position out: nothing outside it can be predicted zero."""
    out = (~mask).nonzero()
    if not len(out):
        out = torch.zeros(1, 3, dtype=torch.long)  # predicts nothing: any box will do
    low, high = out.min(dim=0).values.tolist(), out.max(dim=0).values.tolist()
    g = channel_group
    slots = Box(slice(low[0] // g * g, (high[0] // g + 1) * g), slice(low[1] // p, high[1] // p + 1),
                slice(low[2] // p, high[2] // p + 1))  # fmt: skip
    return pixel_boxes(slots, p, *hw)


@dataclass(frozen=True)
class Candidate:
    """A change to one layer: MACs it saves per image, the images it mispredicts on (only those
    need the suffix), and the predicted-zero positions within ``box`` of the op's output (rows
    for given images; the rest of the map keeps its dense values)."""

    saved: float
    images: torch.Tensor
    predicted: Callable[[torch.Tensor], torch.Tensor]
    box: Box = WHOLE


@dataclass
class _Layer:
    op: SpatialConv
    node: fx.Node
    suffix: fx.GraphModule  # from the op output, or from the pool's output when there is one
    frontier: list[fx.Node]  # values the suffix reads besides its first input, in placeholder order
    suffix_share: float  # the suffix's share of the network's MACs
    pool: Callable[[torch.Tensor], torch.Tensor] | None = None  # the max pool the op feeds alone
    windows: PoolingWindows | None = None  # that pool's windows


_MAX_POOLS = {F.max_pool2d, torch.max_pool2d, torch.ops.aten.max_pool2d.default}


def _max_pool_after(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """The max pool that is the only reader of ``node``'s value (its only tensor input), if any."""
    if len(node.users) != 1:
        return None
    user = next(iter(node.users))
    if user.op == "call_module":
        module = gm.get_submodule(user.target)
        pool = isinstance(module, nn.MaxPool2d) and not module.return_indices
        return user if pool and user.args == (node,) and not user.kwargs else None
    if user.op == "call_function" and user.target in _MAX_POOLS and user.args[:1] == (node,):
        rest = [*user.args[1:], *user.kwargs.values()]
        indices = user.kwargs.get("return_indices") or (len(user.args) > 6 and user.args[6])
        found = []
        fx.node.map_arg(rest, found.append)  # the nodes among the other arguments
        return user if not found and not indices else None
    return None


def _pool_function(gm: fx.GraphModule, pool: fx.Node) -> Callable[[torch.Tensor], torch.Tensor]:
    if pool.op == "call_module":
        return gm.get_submodule(pool.target)
    return lambda t: pool.target(t, *pool.args[1:], **pool.kwargs)


class Evaluator:
    """Scores masks of a graph module with Spatial ops against ``target`` (labels, or the
    dense model's predictions for label-free data) on images ``x``.

    ``suffix_images`` counts suffix images run, ``work`` image passes (suffixes weighted by
    their share of the MACs), both on this rank's images; ``full_passes`` counts whole-network
    passes. With ``world``, this rank keeps its share of ``x`` (``count`` is all of them).
    ``max_cache_bytes`` bounds the dense values kept at once (``ActivationCache``); None keeps
    every layer's. With ``layers`` False it scores whole networks alone (``evaluate_network``):
    no suffixes are built and no layer's values are kept; given the dense model's
    ``dense_predictions`` on ``x`` (made once by the job), it does not run the dense model again.
    """

    def __init__(self, gm: fx.GraphModule, x: torch.Tensor, target: torch.Tensor, batch_size: int = 256,
                 world: World = SINGLE, max_cache_bytes: int | None = None, layers: bool = True,
                 dense_predictions: torch.Tensor | None = None):  # fmt: skip
        self.gm = set_eval(gm)
        self.world = world
        self.count = len(x)
        share = world.image_share(len(x))
        self.x, self.target = _channels_last(x[share]), target[share]
        self.batch_size = batch_size
        self.ops = spatial_ops(gm)
        for op in self.ops.values():
            op.set_mask(torch.ones_like(op.mask))
            op.track_stats = False
        self.node_of = {gm.get_submodule(n.target).layer_name: n for n in gm.graph.nodes if n.op == "call_module"
                        and isinstance(gm.get_submodule(n.target), SpatialConv)}  # fmt: skip
        self.layers = self._layers() if layers else {}
        needs = {name: [layer.node, *layer.frontier] for name, layer in self.layers.items()}
        self._pooled: tuple[str, torch.Tensor] | None = None  # (layer, its max pool's dense output)
        if layers or dense_predictions is None:
            self.cache = ActivationCache(self.gm, self.x, needs, batch_size, max_cache_bytes)
            self._dense_logits = self.cache.logits
            check_finite(self._dense_logits, f"the outputs of the dense model on the {len(self.x)} calibration images")
            self.dense_correct = self._correct(self._dense_logits)
        else:
            self.cache, self._dense_logits = None, None
            self.dense_correct = dense_predictions[share] == self.target
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
        changed = torch.zeros(2, len(candidates), dtype=torch.int64)  # correct images gained; broken images
        for k, images, correct, finite in self._run_suffix(layer, candidates):
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
        """The candidate that installs full ``mask`` (C, Hp, Wp) on ``layer``. Only patches
        whose pattern leaves a position out can predict: the work covers the box around them."""
        op, dense = self.ops[layer], self.dense_output(layer)
        box, mask_box = changed_box(mask, op.patch_size, op.channel_group, dense.shape[-2:])
        crop = box.of(dense)
        pred = predicted_zero(crop, mask_box.of(mask), op.patch_size, op.edge, op.channel_group)
        wrong = (pred & (crop > 0)).flatten(1).any(dim=1).nonzero().flatten()
        saved = self.saved_per_image(int(pred.sum()), op.macs_per_position)
        return Candidate(saved, wrong, lambda images: pred[images], box)

    def dense_margins(self) -> torch.Tensor:
        """Per image (this rank's): the target's dense logit less the highest other one; an
        image is right while it is positive."""
        return _margins(self._dense_logits, self.target)

    def margin_gradient(self, layer: str) -> torch.Tensor:
        """d margin / d output of ``layer``, dense, per image (this rank's): one forward and
        backward pass of the layer's suffix (through its max pool, when it has one), the other
        class of each margin held at its dense value. Changing the output by ``delta`` moves
        the margin by about ``(gradient * delta).sum()``."""
        spec = self.layers[layer]
        dense, *frontier_values = self._dense_values(layer)
        grads = []
        for start in range(0, len(dense), self.batch_size):
            rows = slice(start, start + self.batch_size)
            with torch.enable_grad():
                out = dense[rows].detach().requires_grad_(True)
                first = spec.pool(out) if spec.pool is not None else out
                logits = spec.suffix(first, *(values[rows] for values in frontier_values))
                logits = logits[0] if isinstance(logits, (tuple, list)) else logits
                runner_up = _runner_up(self._dense_logits[rows], self.target[rows])
                margins = logits.gather(1, self.target[rows, None]) - logits.gather(1, runner_up[:, None])
                (grad,) = torch.autograd.grad(margins.sum(), out)
            grads.append(grad)
        self.work += len(dense) * spec.suffix_share * 3  # a backward pass costs about two forward ones
        return torch.cat(grads)

    def totals(self) -> tuple[int, float]:
        """Suffix images run and work done (image passes, a partial recording pass of the cache
        counted whole), over all ranks."""
        work = self.work + (self.cache.passes - 1 if self.cache else 0) * len(self.x)
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

    def _run_suffix(self, name: str, candidates: list[Candidate]):
        """(candidate index, images, correct count, all outputs finite) for each candidate that
        mispredicts on some images, running those images in batches of whole candidates. A
        batch's input is made when it runs: one gather of the dense output, then each
        candidate's box zeroed where it predicts."""
        layer = self.layers[name]
        dense, *frontier_values = self._dense_values(name)
        pending = [(k, c) for k, c in enumerate(candidates) if len(c.images)]
        start = 0
        while start < len(pending):
            group, size = [], 0
            while start < len(pending) and (not group or size + len(pending[start][1].images) <= self.batch_size):
                group.append(pending[start])
                size += len(pending[start][1].images)
                start += 1
            images = torch.cat([c.images for _, c in group])
            if layer.windows is not None:
                correct, finite = self._pooled_outcomes(name, layer, dense, images, group, frontier_values)
            else:
                op_out = dense[images]
                offset = 0
                for _, c in group:
                    part = op_out[offset : offset + len(c.images)]
                    c.box.of(part).masked_fill_(c.predicted(c.images), 0.0)
                    offset += len(c.images)
                correct, finite = self._suffix_outcomes(layer, images, op_out, frontier_values)
            offset = 0
            for k, c in group:
                rows = slice(offset, offset + len(c.images))
                yield k, c.images, int(correct[rows].sum()), bool(finite[rows].all())
                offset += len(c.images)

    def _pooled_outcomes(self, name, layer, dense, images, group, frontier_values):
        """``_suffix_outcomes`` for a layer whose max pool alone reads it, pooling only where the
        group's boxes reach: the window of the layer's output the pool reads there is gathered,
        each candidate's box zeroed in it, and pooled; an image whose pooled window comes out as
        it was keeps its dense output. A max is exact: the pooled values are those of the whole
        map, and the plan the same."""
        pooled = self._pooled_dense(name, dense)
        spans = _span([c.box for _, c in group], dense.shape[-2:])
        reach = [_pool_reach(layer.windows, axis, span, dense.shape[-2 + axis], pooled.shape[-2 + axis])
                 for axis, span in enumerate(spans)]  # fmt: skip
        (out_rows, in_rows, row_pads), (out_cols, in_cols, col_pads) = reach
        correct, finite = self.dense_correct[images].clone(), torch.ones(len(images), dtype=torch.bool)
        if out_rows.stop <= out_rows.start or out_cols.stop <= out_cols.start:
            return correct, finite  # no window of the pool reads what changed
        window = dense[images, :, in_rows, in_cols]
        offset = 0
        for _, c in group:
            _zero_in_window(window[offset : offset + len(c.images)], c, (in_rows, in_cols), dense.shape[-2:])
            offset += len(c.images)
        with torch.no_grad():
            padded = F.pad(window, (*col_pads, *row_pads), value=float("-inf")) if any(row_pads + col_pads) else window
            w = layer.windows
            changed = F.max_pool2d(padded, w.kernel, w.stride, 0, w.dilation, ceil_mode=False)
        moved = (changed != pooled[images, :, out_rows, out_cols]).flatten(1).any(dim=1)
        if not bool(moved.any()):
            return correct, finite
        rows, images = moved.nonzero().flatten(), images[moved]
        start = pooled[images]
        start[..., out_rows, out_cols] = changed[moved]
        logits = self._forward(layer.suffix, (start, *(values[images] for values in frontier_values)))
        self.suffix_images += len(images)
        self.work += len(images) * layer.suffix_share
        correct[rows] = logits.argmax(dim=1) == self.target[images]
        finite[rows] = logits.isfinite().flatten(1).all(dim=1)
        return correct, finite

    def _suffix_outcomes(self, layer, images, op_out, frontier_values):
        """Per image: right, and all outputs finite, with ``op_out`` as the layer's output."""
        logits = self._forward(layer.suffix, (op_out, *(values[images] for values in frontier_values)))
        self.suffix_images += len(images)
        self.work += len(images) * layer.suffix_share
        return logits.argmax(dim=1) == self.target[images], logits.isfinite().flatten(1).all(dim=1)

    def _layers(self) -> dict[str, _Layer]:
        """Each op's suffix: the graph after it, and what that graph reads besides the op. An
        op that feeds a max pool alone has its suffix start after the pool: an image whose
        pooled map a change leaves as it was keeps its dense output, without the suffix."""
        total = account(self.gm).total_macs or 1
        layers = {}
        for name, node in self.node_of.items():
            pool = _max_pool_after(self.gm, node)
            windows = pooling_windows(self.gm, pool) if pool is not None else None
            pool = pool if windows is not None else None  # the suffix starts after a pool whose windows are known
            suffix, frontier = suffix_after(self.gm, pool or node)
            share = account(suffix).total_macs / total
            function = _pool_function(self.gm, pool) if pool is not None else None
            layers[name] = _Layer(self.ops[name], node, suffix, frontier, share, function, windows)
        return layers

    def _pooled_dense(self, name: str, dense: torch.Tensor) -> torch.Tensor:
        """The dense output of the layer's max pool, kept for the layer searched now."""
        if self._pooled is None or self._pooled[0] != name:
            self._pooled = None  # freed before the next is made
            with torch.no_grad():
                self._pooled = (name, self.layers[name].pool(dense))
        return self._pooled[1]


def _runner_up(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per image, the class other than the target with the highest logit."""
    others = logits.detach().clone()
    others.scatter_(1, target[:, None], float("-inf"))
    return others.argmax(dim=1)


def _margins(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    runner_up = _runner_up(logits, target)
    return (logits.gather(1, target[:, None]) - logits.gather(1, runner_up[:, None])).flatten()


def _span(boxes: list[Box], hw) -> tuple[slice, slice]:
    """The rows and columns of an H x W map that ``boxes`` cover together."""
    spans = []
    for axis, size in enumerate(hw):
        parts = [(box.rows if axis == 0 else box.cols).indices(size)[:2] for box in boxes]
        spans.append(slice(min(p[0] for p in parts), max(p[1] for p in parts)))
    return spans[0], spans[1]


def _pool_reach(windows: PoolingWindows, axis: int, span: slice, size: int, out_size: int):
    """Along one axis: the pool's outputs whose windows read ``span`` of its input, the input
    positions those outputs read, and the padding (before, after) they read beyond the map."""
    k, s, p, d = windows.kernel[axis], windows.stride[axis], windows.padding[axis], windows.dilation[axis]
    low = max(0, -(-(span.start + p - d * (k - 1)) // s))
    high = min(out_size, (span.stop - 1 + p) // s + 1) if span.stop > span.start else low
    if high <= low:
        return slice(0, 0), slice(0, 0), (0, 0)
    first, last = low * s - p, (high - 1) * s - p + d * (k - 1) + 1
    return slice(low, high), slice(max(0, first), min(size, last)), (max(0, -first), max(0, last - size))


def _zero_in_window(window: torch.Tensor, candidate: Candidate, at: tuple[slice, slice], hw) -> None:
    """Zero what ``candidate`` predicts in ``window`` (its images' part of the map at ``at``):
    the part of its box inside the window."""
    box, predicted = candidate.box, candidate.predicted(candidate.images)
    cut_box, cut_predicted = [], []
    for axis, (part, inside) in enumerate(zip((box.rows, box.cols), at)):
        start, stop, _ = part.indices(hw[axis])
        low, high = max(start, inside.start), min(stop, inside.stop)
        if high <= low:
            return  # the box lies outside what the pool reads here
        cut_box.append(slice(low - inside.start, high - inside.start))
        cut_predicted.append(slice(low - start, high - start))
    Box(box.channels, *cut_box).of(window).masked_fill_(predicted[..., cut_predicted[0], cut_predicted[1]], 0.0)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """Images stored channels last: convolutions on CPU pick that layout from their input (a
    forward pass 3.1x faster on CQ, 2.4x on MobileNetV2, the same on ResNet-50:
    benchmarks/search_layout.py); the maps they make, which the cache keeps and the suffixes
    read, follow it."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
