"""Per-layer SSC (g, p) for a target parameter fraction of the whole model.

Every conv that can take SSC gets a *ladder*: its allowed choices from dense down, strictly
fewer weights at each rung. A k x k conv's rungs are (g, p) with g > 1 a divisor of gcd(C, T) and
p a divisor with p <= g (the seed's tables keep p <= g; with the 1x1 branch off, (g, None)); a 1x1
conv's rungs are pointwise group convs (None, p), p > 1. Rungs with equal weights keep the
smallest g.

Two phases:
1. prune: while the model is above the target, move down one rung the layer that holds the most
   weights now (the deepest on a tie). Deep layers hold the most weights, so they are pruned
   first and most; early layers, which the seed finds the most sensitive, last.
2. fill: while some layer can move one rung back up (finer) and stay at or under the target,
   move the one that lands closest to it (the shallowest on a tie).

The result is at or under the target, and no single one-rung-finer move of any layer stays at
or under it: no allowed change of one layer towards dense gets closer. When even the last rung
of every ladder stays above the target, the assignment says so (``meets_target`` is False).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import fx

from ...transform.layers import Layer
from .choices import Choice, SSCAssignment, choice_problem, finish_assignment, layer_weight_params, ssc_candidates
from .op import divisors


@dataclass
class _Ladder:
    layer: Layer
    depth: int
    rungs: list[tuple[int, Choice | None]]  # (weights, choice), strictly decreasing weights; rung 0 is dense
    at: int = 0

    @property
    def weights(self) -> int:
        return self.rungs[self.at][0]


def ladder(layer: Layer, pointwise_branch: bool = True) -> list[tuple[int, Choice | None]]:
    """The rungs of ``layer``: (weights, choice) from dense (choice None) down, strictly fewer
    weights at each rung."""
    allowed = divisors(math.gcd(layer.in_channels, layer.out_channels))
    if layer.kernel_size == (1, 1):
        options = [(None, p) for p in allowed if p > 1]
    elif pointwise_branch:
        options = [(g, p) for g in allowed if g > 1 for p in allowed if p <= g]
    else:
        options = [(g, None) for g in allowed if g > 1]
    options = [c for c in options if choice_problem(layer, c) is None]
    rungs = [(layer_weight_params(layer, None), None)]
    for weights, choice in sorted(
        ((layer_weight_params(layer, c), c) for c in options), key=lambda r: (-r[0], r[1][0] or 0)
    ):
        if weights < rungs[-1][0]:
            rungs.append((weights, choice))
    return rungs


def solve_budget(
    gm: fx.GraphModule,
    target: float,
    selected: Callable[[Layer], bool] = lambda layer: True,
    pointwise_branch: bool = True,
    pointwise_convs: bool = True,
) -> SSCAssignment:
    """Per-layer (g, p) that bring the parameters of ``gm`` to at most ``target`` of its dense
    count, as closely as the ladders allow (see the module docstring).

    Example::

        gm = capture(build("vgg19"), (1, 3, 32, 32)).graph_module
        solve_budget(gm, 0.1).fraction   # <= 0.1
    """
    candidates, skipped = ssc_candidates(gm, selected)
    dense_total = sum(p.numel() for p in gm.parameters())
    budget = target * dense_total
    ladders = []
    for depth, (name, layer) in enumerate(candidates.items()):
        if layer.kernel_size == (1, 1) and not pointwise_convs:
            skipped[name] = "1x1 conv (pointwise convs are not searched)"
            continue
        rungs = ladder(layer, pointwise_branch)
        if len(rungs) == 1:
            skipped[name] = f"no SSC choice fits its channels ({layer.in_channels} -> {layer.out_channels})"
            continue
        ladders.append(_Ladder(layer, depth, rungs))
    total = dense_total
    while total > budget:
        movable = [lad for lad in ladders if lad.at + 1 < len(lad.rungs)]
        if not movable:
            break
        lad = max(movable, key=lambda lad: (lad.weights, lad.depth))
        total += lad.rungs[lad.at + 1][0] - lad.weights
        lad.at += 1
    while True:
        fits = [
            (total + lad.rungs[lad.at - 1][0] - lad.weights, -lad.depth, lad)
            for lad in ladders
            if lad.at > 0 and total + lad.rungs[lad.at - 1][0] - lad.weights <= budget
        ]
        if not fits:
            break
        total, _, lad = max(fits, key=lambda fit: fit[:2])
        lad.at -= 1
    proposed = {lad.layer.name: lad.rungs[lad.at][1] for lad in ladders if lad.at > 0}
    for lad in ladders:
        if lad.at == 0:
            skipped[lad.layer.name] = "left dense by the solver"
    fitted = {name: layer for name, layer in candidates.items() if name in proposed}
    return finish_assignment(
        gm, fitted, proposed, skipped, pointwise_branch, target=target, source=f"solver, target {target:g}"
    )
