"""The mask search for Spatial ops (seed 002, section 5 and Appendix 1).

A first level scores every (target, pattern) on one layer with the others dense; quantizer
levels merge the M best options of each target into options of the next coarser target
(patches -> channel -> layer); the last level combines layers and backs off, cheapest error
first, until the whole network meets epsilon. What a target is depends on the mode:

| mode              | first-level target                  | levels after it          |
|-------------------|-------------------------------------|--------------------------|
| uniform_layer     | a layer (one pattern everywhere)    | layer                    |
| uniform_filter    | a cluster of patch positions        | patch -> layer           |
| uniform_patch     | a channel (its pattern tiled)       | channel -> layer         |
| max_granularity   | a cluster of patches of a channel   | patch -> channel -> layer|

Targets are not independent (the seed assumes they are), so every combination is evaluated on
the real network and the final masks are verified on the whole calibration split.

With a ``network`` evaluator, the per-layer levels run on the images of ``evaluator`` (a sample
of the calibration split, ``SearchConfig.search_images``) and the layer level and final check
on ``network``'s (all of them): the per-layer work then scales with the sample, and epsilon
holds on every image.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...errors import InputError
from ...progress import PhaseTimes, Progress, silent
from ...search.accuracy_budget import accuracy_loss, within
from ...search.checkpoint import Checkpoint
from .evaluator import WHOLE, Box, Candidate, Evaluator, Outcome, pixel_boxes
from .op import all_patterns, padded_size, predicted_zero, tile
from .search_config import MODES, OperatingPoint, SearchConfig, SearchResult

NONE = -1  # slot assignment: no prediction (all ones)
__all__ = ["MODES", "SearchConfig", "SearchResult", "SpatialSearch", "OperatingPoint", "Progress"]
LAYERS_PHASE, COMBINE_PHASE = "spatial search", "combining layers"  # progress phases
LEVELS = {"pq": "patch level", "cq": "channel level"}


@dataclass
class _Option:
    assignment: torch.Tensor  # (C, Hb, Wb) pattern index per slot, NONE = no prediction
    accuracy: float
    saved: float
    risk: float = 0.0  # the share of the images' margins it uses up, to first order (see _with_risk)
    moves: torch.Tensor | None = None  # per image of this rank: how far it moves the margin, to first order


class SpatialSearch:
    """Runs the multi-level search on an evaluator (see module docstring)."""

    def __init__(
        self,
        evaluator: Evaluator,
        config: SearchConfig,
        checkpoint: Checkpoint | None = None,
        progress: Progress | None = None,
        time_saved: Callable[[str, torch.Tensor], float] | None = None,
        network: Evaluator | None = None,
    ):
        self.ev = evaluator  # per-layer levels
        self.net = network or evaluator  # whole networks: combining layers, the final check
        self.time_saved = time_saved  # (layer, mask) -> measured ms saved, for cost "measured"
        self.config = config
        self.checkpoint = checkpoint or Checkpoint(None)
        self.progress = progress or silent
        self._at = (0, 0, "")  # the layer being searched: (index, count, name), for progress
        ops = list(evaluator.ops.values())
        if not ops:
            raise InputError("the model has no Spatial ops to search (no conv feeds a ReLU)")
        self.p = ops[0].patch_size
        if config.mode in ("uniform_patch", "max_granularity") and any(op.channel_group > 1 for op in ops):
            raise InputError(f"mode {config.mode} gives channels their own patterns: it needs channel group 1")
        self.patterns = all_patterns(self.p, config.ones_range)
        if not len(self.patterns):
            raise InputError(f"ones range {config.ones_range} leaves no {self.p}x{self.p} pattern")
        self._padded_patterns = torch.cat([self.patterns, torch.ones(1, self.p, self.p, dtype=torch.bool)])
        self._moves: tuple[str, torch.Tensor] | None = None  # (layer, its margin moves), see _margin_moves
        self.candidates = 0
        self.options = 0
        self.times = PhaseTimes()  # first level, patch level, channel level, combining layers

    # --- entry point ---------------------------------------------------------------------------

    def run(self) -> SearchResult:
        start = time.perf_counter()
        try:
            options = self._all_layer_options()
            if self.config.cost == "measured":
                with self.times.span("layer timing"):
                    options = {layer: self._by_time_saved(layer, options) for layer, options in options.items()}
            with self.times.span(COMBINE_PHASE):
                masks, points, final = self._combine_layers(options)
        finally:
            self.checkpoint.flush()
        if final is None:  # no combination met epsilon: the plan is the dense network
            with self.times.span("whole-network check"):
                final = self.net.evaluate_network(masks)
        self.net.install(masks)  # the plan's, not the last state the back-off ran
        suffix_images, work = self.ev.totals()
        if self.net is not self.ev:
            work += self.net.totals()[1]
        return SearchResult(
            masks=masks,
            dense_accuracy=self.net.dense_accuracy,
            accuracy=final.accuracy,
            macs_saved=final.macs_saved,
            points=points,
            options=self.options,
            candidates=self.candidates,
            suffix_images=suffix_images,
            full_passes=self.net.full_passes,
            work=work / self.net.count,
            seconds=time.perf_counter() - start,
            ranks=self.ev.world.size,
            search_images=self.ev.count,
            cache={"peak_bytes": self.ev.cache.peak_bytes, "groups": len(self.ev.cache.groups),
                   "recording_passes": self.ev.cache.passes},  # fmt: skip
            phases=dict(self.times.seconds),
        )

    def drop(self, accuracy: float) -> float:
        """A layer option's loss (on the per-layer images)."""
        return accuracy_loss(self.ev.dense_accuracy, accuracy, self.config.epsilon_kind)

    def within_budget(self, accuracy: float, on: Evaluator | None = None) -> bool:
        """Whether ``accuracy`` on ``on``'s images (default: the per-layer images) keeps epsilon."""
        dense = (on or self.ev).dense_accuracy
        return within(dense, accuracy, self.config.epsilon, self.config.epsilon_kind)

    # --- per layer: first level and quantizer levels -------------------------------------------

    def _all_layer_options(self) -> dict[str, list[_Option]]:
        layers = self.ev.layer_names
        options = {}
        for i, layer in enumerate(layers):
            self._at = (i, len(layers), layer)
            self._report("starting", 0.0)
            layer_options = self._layer_options(layer)
            fresh = any(o.moves is None for o in layer_options)  # merged options under --max-risk have theirs
            options[layer] = self._with_risk(layer, layer_options) if fresh else layer_options
        self._moves = None
        best = max((o.saved for layer_options in options.values() for o in layer_options), default=0.0)
        self.progress(LAYERS_PHASE, "every layer", len(layers), len(layers), unit="layers", best_saved=best)
        return options

    def _report(self, stage: str, best: float) -> None:
        """Progress within the current layer; the count is of layers finished."""
        i, n, layer = self._at
        self.progress(LAYERS_PHASE, f"layer {i + 1} of {n} ({layer}): {stage}", i, n, unit="layers", best_saved=best)

    def _layer_options(self, layer: str) -> list[_Option]:
        c, hb, wb = self._slots(layer)
        clusters = self._clusters(hb, wb)
        mode = self.config.mode
        if mode == "uniform_layer":
            targets = {"all": WHOLE}
        elif mode == "uniform_filter":
            targets = {f"k{i}": cluster for i, cluster in enumerate(clusters)}
        elif mode == "uniform_patch":
            targets = {f"c{ch}": Box(slice(ch, ch + 1)) for ch in range(c)}
        else:
            targets = {
                f"c{ch}k{i}": Box(slice(ch, ch + 1), cluster.rows, cluster.cols)
                for ch in range(c)
                for i, cluster in enumerate(clusters)
            }
        with self.times.span("first level"):
            if self.config.first_level == "first_order":
                first = self._first_order_level(layer, targets)
            else:
                first = self._first_level(layer, targets)
        if mode == "uniform_layer":
            return self._rescored(layer, first["all"]) if self.config.first_level == "first_order" else first["all"]
        if mode == "max_granularity":  # patch level: clusters -> channel options
            channels = {
                f"c{ch}": self._merge(layer, f"pq/c{ch}", [first[f"c{ch}k{i}"] for i in range(len(clusters))])
                for ch in range(c)
            }
            return self._merge(layer, "cq", list(channels.values()))
        return self._merge(layer, "pq" if mode == "uniform_filter" else "cq", list(first.values()))

    def _first_level(self, layer: str, targets: dict[str, Box]) -> dict[str, list[_Option]]:
        """Score (target, pattern) pairs with the rest of the network dense, lazily: per target,
        patterns go most-MACs-saved first and stop once the M best within epsilon are known;
        a pair that could not meet epsilon even if every image it mispredicts came out right
        is dropped without running. Both shortcuts leave the kept options exactly as a full
        evaluation would. A target is a box of patch slots; its candidates predict within the
        box alone (prediction is local to a patch)."""
        op, dense = self.ev.ops[layer], self.ev.dense_output(layer)  # this rank's images
        c, h, w = dense.shape[1:]
        hb, wb = padded_size(h, self.p) // self.p, padded_size(w, self.p) // self.p
        masks = [tile(pattern, c, h, w, self.p) for pattern in self.patterns]
        self.options += len(masks) * len(targets)
        pending = {name: [] for name in targets}  # target -> [(saved, j, images, risk)]
        for j, mask in enumerate(masks):
            pred = predicted_zero(dense, mask, self.p, op.edge, op.channel_group)
            per_slot = self.ev.world.sum(_per_slot(pred, self.p, hb, wb))  # predicted positions, every rank's images
            wrong_slot = _per_slot_any(pred & (dense > 0), self.p, hb, wb)  # this rank's images
            risks = self._target_risks(layer, pred, targets) if self.config.max_risk is not None else {}
            for name, slots in targets.items():
                saved = float(slots.of(per_slot).sum()) / self.ev.count * op.macs_per_position
                if saved > 0:
                    images = slots.of(wrong_slot).flatten(1).any(dim=1).nonzero().flatten()
                    pending[name].append((saved, j, images, risks.get(name, 0.0)))
            self._report(f"statistics, pattern {j + 1} of {len(masks)}", 0.0)
        for queue in pending.values():
            queue.sort(key=lambda item: (-item[0], item[1]))
        pixels = {name: pixel_boxes(slots, self.p, h, w) for name, slots in targets.items()}
        records: dict[str, list[_Option]] = {name: [] for name in targets}
        done_targets = 0
        while pending:
            batch = []  # (target, j, key, candidate)
            for name in list(pending):
                if self._settled(records[name], pending[name]):
                    del pending[name]
                    done_targets += 1
                    continue
                saved, j, images, risk = pending[name].pop(0)
                key = f"fl/{layer}/{name}/{j}"
                record = self.checkpoint.get(key)
                if record is not None:
                    records[name].append(self._option(c, hb, wb, targets[name], j, *record, risk))
                    continue
                best_case = self.ev.best_case_accuracy(images)
                if not self.within_budget(best_case) or not self._within_risk(risk):  # out whatever the suffix says
                    self.checkpoint.put(key, [best_case, saved])
                    records[name].append(self._option(c, hb, wb, targets[name], j, best_case, saved, risk))
                    continue
                box, mask_box = pixels[name]
                crop, mask_crop = box.of(dense), mask_box.of(masks[j])
                predicted = lambda imgs, crop=crop, mask=mask_crop: predicted_zero(
                    crop[imgs], mask, self.p, op.edge, op.channel_group
                )
                batch.append((name, j, key, Candidate(saved, images, predicted, box), risk))
            for (name, j, key, _, risk), outcome in zip(batch, self._evaluate(layer, [b[3] for b in batch])):
                self.checkpoint.put(key, [outcome.accuracy, outcome.macs_saved])
                records[name].append(self._option(c, hb, wb, targets[name], j, outcome.accuracy, outcome.macs_saved,
                                                  risk))  # fmt: skip
            self._report(f"first level, {done_targets} of {len(targets)} targets settled", self._best(records))
        return {name: self._ranked(options) for name, options in records.items()}

    def _first_order_level(self, layer: str, targets: dict[str, Box]) -> dict[str, list[_Option]]:
        """The first level estimated, with no network run per option: zeroing an activation
        moves an image's margin by about minus the margin's gradient times the activation
        (``Evaluator.margin_gradient``), so a (target, pattern) moves it by the sum over the
        positions it predicts zero in the target's box (those already zero add nothing), and
        the image counts as right while the moved margin stays positive."""
        op, dense = self.ev.ops[layer], self.ev.dense_output(layer)
        c, h, w = dense.shape[1:]
        hb, wb = padded_size(h, self.p) // self.p, padded_size(w, self.p) // self.p
        self._report("margin gradients", 0.0)
        move = self._margin_moves(layer)
        margins = self.ev.dense_margins()
        masks = [tile(pattern, c, h, w, self.p) for pattern in self.patterns]
        self.options += len(masks) * len(targets)
        records: dict[str, list[_Option]] = {name: [] for name in targets}
        for j, mask in enumerate(masks):
            pred = predicted_zero(dense, mask, self.p, op.edge, op.channel_group)
            per_slot = self.ev.world.sum(_per_slot(pred, self.p, hb, wb))
            moved = _per_slot_total(torch.where(pred, move, 0.0), self.p, hb, wb)
            saved = {name: float(slots.of(per_slot).sum()) / self.ev.count * op.macs_per_position
                     for name, slots in targets.items()}  # fmt: skip
            scored = [name for name in targets if saved[name] > 0]
            by_image = [targets[name].of(moved).sum(dim=(1, 2, 3)) for name in scored]
            totals = torch.tensor([[float((margins + m > 0).sum()), float(used_margins(m, margins).sum())]
                                   for m in by_image], dtype=torch.float64).reshape(-1, 2)  # fmt: skip
            for name, (count, used) in zip(scored, self.ev.world.sum(totals).tolist()):  # one collective per pattern
                records[name].append(self._option(c, hb, wb, targets[name], j, count / self.ev.count, saved[name],
                                                  used / self.ev.count))  # fmt: skip
            self._report(f"first-order estimates, pattern {j + 1} of {len(masks)}", self._best(records))
        return {name: self._ranked(options) for name, options in records.items()}

    def _margin_moves(self, layer: str) -> torch.Tensor:
        """Per activation of the layer's dense output (this rank's images): how much zeroing it
        moves its image's margin, to first order. Kept for the layer searched now."""
        if self._moves is None or self._moves[0] != layer:
            self._moves = None  # freed before the next is made
            self._moves = (layer, -(self.ev.margin_gradient(layer) * self.ev.dense_output(layer)))
        return self._moves[1]

    def _with_risk(self, layer: str, options: list[_Option]) -> list[_Option]:
        """The layer's options with their risk: per image right in the dense network, the share
        of its margin the option uses up to first order (1 where it is estimated to flip), the
        mean over the images. Options whose images all stay right have the same accuracy (a
        sample of fewer than 1 / epsilon images tells no option apart that changes under one
        image in 1 / epsilon); their risk still orders them for the back-off."""
        if not options:
            return options
        moves, margins = self._margin_moves(layer), self.ev.dense_margins()
        every = torch.arange(len(margins))
        per_image = []
        for option in options:
            candidate = self.ev.candidate(layer, self._mask(option.assignment))
            moved = torch.where(candidate.predicted(every), candidate.box.of(moves), 0.0)
            per_image.append(moved.flatten(1).sum(dim=1))
        risks = self._risks(per_image)
        return [_Option(o.assignment, o.accuracy, o.saved, risk, m) for o, risk, m in zip(options, risks, per_image)]

    def _risks(self, per_image: list[torch.Tensor]) -> list[float]:
        """The risk of each margin move (per image of this rank), over every rank's images."""
        margins = self.ev.dense_margins()
        shares = torch.tensor([float(used_margins(moved, margins).sum()) for moved in per_image], dtype=torch.float64)
        return [total / self.ev.count for total in self.ev.world.sum(shares).tolist()]

    def _target_risks(self, layer: str, pred: torch.Tensor, targets: dict[str, Box]) -> dict[str, float]:
        """The risk (``_with_risk``) of predicting ``pred`` (this rank's images) in each target alone."""
        h, w = pred.shape[2:]
        hb, wb = padded_size(h, self.p) // self.p, padded_size(w, self.p) // self.p
        moved = _per_slot_total(torch.where(pred, self._margin_moves(layer), 0.0), self.p, hb, wb)
        return dict(zip(targets, self._risks([slots.of(moved).sum(dim=(1, 2, 3)) for slots in targets.values()])))

    def _within_risk(self, risk: float) -> bool:
        return self.config.max_risk is None or risk <= self.config.max_risk

    def _rescored(self, layer: str, options: list[_Option]) -> list[_Option]:
        """A layer's estimated options scored on the network (its images), those within
        epsilon kept: uniform_layer's first level is its last before layers are combined."""
        keys = [f"rescored/{layer}/{int(o.assignment.max())}" for o in options]
        records = [self.checkpoint.get(key) for key in keys]
        todo = [i for i, record in enumerate(records) if record is None]
        outcomes = self._evaluate(layer, [self.ev.candidate(layer, self._mask(options[i].assignment)) for i in todo])
        for i, outcome in zip(todo, outcomes):
            records[i] = [outcome.accuracy, outcome.macs_saved]
            self.checkpoint.put(keys[i], records[i])
        return self._ranked([_Option(o.assignment, *record, o.risk) for o, record in zip(options, records)])

    def _settled(self, options: list[_Option], queue: list) -> bool:
        """True when no queued pattern can enter this target's top M within epsilon."""
        if not queue:
            return True
        kept = self._ranked(options)
        return len(kept) == self.config.top_m and queue[0][0] < kept[-1].saved

    @staticmethod
    def _option(c, hb, wb, slots: Box, j, accuracy, saved, risk=0.0) -> _Option:
        assignment = torch.full((c, hb, wb), NONE, dtype=torch.long)
        slots.of(assignment).fill_(j)
        return _Option(assignment, accuracy, saved, risk)

    def _merge(self, layer: str, level: str, children: list[list[_Option]]) -> list[_Option]:
        """Options of the parent target: the i-th best option of every child, for i < M."""
        with self.times.span(LEVELS[level[:2]]):
            return self._merged(layer, level, children)

    def _merged(self, layer: str, level: str, children: list[list[_Option]]) -> list[_Option]:
        c, hb, wb = self._slots(layer)
        merged, seen = [], set()
        for i in range(self.config.top_m):
            assignment = torch.full((c, hb, wb), NONE, dtype=torch.long)
            for options in children:
                if options:
                    chosen = options[min(i, len(options) - 1)].assignment
                    assignment = torch.where(chosen != NONE, chosen, assignment)
            key = assignment.numpy().tobytes()
            if key in seen or bool((assignment == NONE).all()):
                continue
            seen.add(key)
            self.options += 1
            record_key = f"{level}/{layer}/{i}"
            record = self.checkpoint.get(record_key)
            if record is None:
                outcome = self._evaluate(layer, [self.ev.candidate(layer, self._mask(assignment))])[0]
                record = [outcome.accuracy, outcome.macs_saved]
                self.checkpoint.put(record_key, record)
            merged.append(_Option(assignment, *record))
            where = LEVELS[level[:2]] + (f", channel {level[4:]}" if "/" in level else "")
            self._report(f"{where}, option {i + 1} of {self.config.top_m}", max(o.saved for o in merged))
        return self._ranked(self._with_risk(layer, merged) if self.config.max_risk is not None else merged)

    # --- layer level: combine layers, back off until the network meets epsilon ------------------

    def _combine_layers(self, options: dict[str, list[_Option]]):
        """The plan's masks, the network states run, and the plan's outcome on the whole network
        (None when no state met epsilon)."""
        layers = [layer for layer in options if options[layer]]
        combos = 1
        for layer in layers:
            combos *= len(options[layer]) + 1
        if self.config.mode == "uniform_layer" and combos <= self.config.exact_limit:
            return self._exact(options, layers)
        return self._greedy(options, layers)

    def _greedy(self, options, layers):
        """The first state of the back-off sequence that meets epsilon on the whole network.

        The sequence is fixed before any network runs (each step backs off the layer whose
        option costs the most on its own), and later states transform less, so the network is
        run at states 0, 1, 3, 7, ... until one meets epsilon, then bisected between it and the
        last that did not: about 2 log2(k) full passes where stepping one by one took k + 1
        (a ResNet-50 dropped 18 layers in 20 passes). Where accuracy is monotone along the
        sequence this is the state stepping finds; where it is not, a state that meets epsilon
        all the same."""
        states = self._back_off_states(options, layers)
        outcomes: dict[int, Outcome] = {}
        bound = 2 * (len(states) - 1).bit_length() + 1

        def meets(index: int, last_if_met: bool) -> bool:
            rank = states[index]
            if rank:
                outcome = self._network(_state_key(rank), self._masks(options, rank))
            else:  # no layer transformed: the dense network, known without running it
                outcome = Outcome(self.net.dense_accuracy, 0.0)
            outcomes[index] = outcome
            met = self.within_budget(outcome.accuracy, self.net) or not rank
            self._combined(f"step {len(outcomes)}: state {index}, {len(rank)} layers transformed",
                           len(outcomes), bound, "steps", met and last_if_met, outcome)  # fmt: skip
            return met

        self.progress(COMBINE_PHASE, "back-off", 0, bound, unit="steps", at_most=True)
        failed, met = -1, 0  # the last state known to fail, the first known to meet epsilon
        while not meets(met, last_if_met=met - failed == 1):
            failed, met = met, min(2 * met + 1, len(states) - 1)
        ended = met - failed == 1
        while met - failed > 1:
            middle = (failed + met) // 2
            if meets(middle, last_if_met=middle - failed == 1):
                met, ended = middle, middle - failed == 1
            else:
                failed, ended = middle, False
        if not ended:  # the last state run did not meet epsilon: the plan is one run before it
            self._combined(f"back-off ends at state {met}, {len(states[met])} layers transformed",
                           len(outcomes), bound, "steps", True, outcomes[met])  # fmt: skip
        points = [self._point(f"layer level {i}", outcomes[i], states[i]) for i in sorted(outcomes)]
        return self._masks(options, states[met]), points, outcomes[met]

    def _back_off_states(self, options, layers) -> list[dict[str, int]]:
        """Every layer at its best option, then one layer backed off per step (it moves to its
        next option that costs less on its own, in accuracy on the per-layer images and then in
        risk, or is dropped), down to no layer transformed.

        The layer stepped is one whose option loses the most on the per-layer images; among
        those (every layer, where the sample tells no option apart), the one whose step takes
        the most off the network's risk per MAC it gives up. The network's risk is the risk of
        every transformed layer's margin moves added up (they add, to first order): layers that
        use up the same images' margins count together, not each on its own."""

        def cost(layer: str, i: int) -> tuple[float, float]:
            return self.drop(options[layer][i].accuracy), options[layer][i].risk

        def milder(layer: str, i: int) -> int | None:
            return next((j for j in range(i + 1, len(options[layer])) if cost(layer, j) < cost(layer, i)), None)

        nothing = torch.zeros(len(self.ev.dense_margins()))

        def moves(layer: str, i: int | None) -> torch.Tensor:
            return nothing if i is None or options[layer][i].moves is None else options[layer][i].moves

        def saved(layer: str, i: int | None) -> float:
            return 0.0 if i is None else options[layer][i].saved

        rank = {layer: 0 for layer in layers}
        states = [dict(rank)]
        while rank:
            loss = max(cost(layer, i)[0] for layer, i in rank.items())
            steps = {layer: milder(layer, i) for layer, i in rank.items() if cost(layer, i)[0] == loss}
            total = sum((moves(layer, i) for layer, i in rank.items()), nothing)
            now, *risks = self._risks([total, *(total - moves(l, rank[l]) + moves(l, j) for l, j in steps.items())])
            ranked = [((now - risk) / max(saved(l, rank[l]) - saved(l, j), 1e-12), options[l][rank[l]].risk,
                       -options[l][rank[l]].saved, l, j) for (l, j), risk in zip(steps.items(), risks)]  # fmt: skip
            *_, worst, step = max(ranked, key=lambda item: item[:3])
            if step is None:
                del rank[worst]
            else:
                rank[worst] = step
            states.append(dict(rank))
        return states

    def _exact(self, options, layers):
        """Every combination of layer options (or none), best estimated saving first; the
        first that meets epsilon on the whole network wins."""
        choices = [range(-1, len(options[layer])) for layer in layers]
        combos = []
        for pick in itertools.product(*choices):
            estimate = sum(options[layer][i].saved for layer, i in zip(layers, pick) if i >= 0)
            combos.append((estimate, pick))
        combos.sort(key=lambda item: -item[0])
        points = []
        self.progress(COMBINE_PHASE, "every combination", 0, len(combos), unit="combinations", at_most=True)
        for step, (_, pick) in enumerate(combos):
            rank = {layer: i for layer, i in zip(layers, pick) if i >= 0}
            masks = self._masks(options, rank)
            outcome = self._network(f"exact/{step}", masks)
            points.append(self._point(f"exact {step}", outcome, rank))
            finished = self.within_budget(outcome.accuracy, self.net)
            item = f"combination {step + 1}, {len(rank)} layers transformed"
            self._combined(item, step + 1, len(combos), "combinations", finished or step + 1 == len(combos), outcome)
            if finished:
                return masks, points, outcome
        return {}, points, None

    def _combined(self, item: str, done: int, bound: int, unit: str, finished: bool, outcome: Outcome) -> None:
        self.progress(COMBINE_PHASE, item, done, bound, unit=unit, at_most=True, end=finished,
                      saved=outcome.macs_saved, accuracy=outcome.accuracy)  # fmt: skip

    # --- helpers -------------------------------------------------------------------------------

    def _network(self, key: str, masks: dict[str, torch.Tensor]) -> Outcome:
        self.options += 1
        record = self.checkpoint.get(key)
        if record is None:
            outcome = self.net.evaluate_network(masks)
            self.candidates += 1
            self.checkpoint.put(key, [outcome.accuracy, outcome.macs_saved])
            return outcome
        return Outcome(*record)

    def _evaluate(self, layer: str, candidates: list[Candidate]) -> list[Outcome]:
        self.candidates += len(candidates)
        return self.ev.evaluate(layer, candidates)

    def _point(self, step: str, outcome: Outcome, rank: dict[str, int]) -> OperatingPoint:
        return OperatingPoint(step, outcome.accuracy, outcome.macs_saved, tuple(sorted(rank.items())))

    def _masks(self, options, rank) -> dict[str, torch.Tensor]:
        return {layer: self._mask(options[layer][i].assignment) for layer, i in rank.items()}

    def _mask(self, assignment: torch.Tensor) -> torch.Tensor:
        c, hb, wb = assignment.shape
        patterns = self._padded_patterns[assignment]  # NONE (-1) picks the all-ones pattern
        return tile(patterns, c, hb * self.p, wb * self.p, self.p)

    def _by_time_saved(self, layer: str, options: list[_Option]) -> list[_Option]:
        """The layer's options with ``saved`` in measured milliseconds, those that save no time
        dropped (below the crossover), most time saved first."""
        if self.time_saved is None:
            raise InputError("cost 'measured' needs a layer timer")
        timed = [_Option(o.assignment, o.accuracy, self.time_saved(layer, self._mask(o.assignment)), o.risk, o.moves)
                 for o in options]  # fmt: skip
        kept = [o for o in timed if o.saved > 0]
        kept.sort(key=lambda o: (-o.saved, -o.accuracy))
        return kept

    def _ranked(self, options: list[_Option]) -> list[_Option]:
        """Options within epsilon, most MACs saved first (ties: higher accuracy), top M."""
        kept = [o for o in options if self.within_budget(o.accuracy) and self._within_risk(o.risk) and o.saved > 0]
        kept.sort(key=lambda o: (-o.saved, -o.accuracy))
        return kept[: self.config.top_m]

    def _slots(self, layer: str) -> tuple[int, int, int]:
        op = self.ev.ops[layer]
        return op.mask.shape[0], op.mask.shape[1] // self.p, op.mask.shape[2] // self.p

    def _clusters(self, hb: int, wb: int) -> list[Box]:
        """Blocks of granularity x granularity patch slots (every channel), row by row."""
        g = self.config.granularity
        if g == 0:
            return [WHOLE]
        return [Box(rows=slice(top, top + g), cols=slice(left, left + g))
                for top in range(0, hb, g) for left in range(0, wb, g)]  # fmt: skip

    @staticmethod
    def _best(records: dict[str, list[_Option]]) -> float:
        return max((o.saved for options in records.values() for o in options), default=0.0)


def used_margins(moved: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """Per image, the share of its margin that moving it by ``moved`` uses up, in [0, 1] (1: it
    flips); 0 for an image wrong already."""
    used = (-moved / margins.clamp(min=torch.finfo(margins.dtype).tiny)).clamp(0.0, 1.0)
    return torch.where(margins > 0, used, 0.0)


def _state_key(rank: dict[str, int]) -> str:
    """The checkpoint key of a network state: what it transforms, not where the back-off
    sequence has it (a resumed search whose sequence differs must not take another's record)."""
    state = ",".join(f"{layer}={i}" for layer, i in sorted(rank.items()))
    return "lq/" + hashlib.sha256(state.encode()).hexdigest()[:16]


def _padded(t: torch.Tensor, p: int, hb: int, wb: int) -> torch.Tensor:
    h, w = t.shape[-2:]
    return torch.nn.functional.pad(t, (0, wb * p - w, 0, hb * p - h))


def _per_slot(pred: torch.Tensor, p: int, hb: int, wb: int) -> torch.Tensor:
    n, c = pred.shape[:2]
    return _padded(pred.to(torch.int32), p, hb, wb).view(n, c, hb, p, wb, p).sum(dim=(0, 3, 5))


def _per_slot_total(values: torch.Tensor, p: int, hb: int, wb: int) -> torch.Tensor:
    """Per image, channel and patch slot: the sum of ``values`` (N, C, H, W) in the patch."""
    n, c = values.shape[:2]
    return _padded(values, p, hb, wb).reshape(n, c, hb, p, wb, p).sum(dim=(3, 5))


def _per_slot_any(flags: torch.Tensor, p: int, hb: int, wb: int) -> torch.Tensor:
    n, c = flags.shape[:2]
    return _padded(flags.to(torch.uint8), p, hb, wb).view(n, c, hb, p, wb, p).amax(dim=(3, 5)).bool()
