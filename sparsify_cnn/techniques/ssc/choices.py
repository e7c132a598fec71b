"""What an SSC choice is and which convs can take it: a choice is ``(g, p)``, ``g`` groups for
the k x k branch and ``p`` groups for the interleaved 1 x 1 branch, ``None`` for a branch left
out (1x1 convs take only ``(None, p)``). An assignment gives each conv its choice, or the reason
it stays dense, and the parameter fraction of the whole model. The presets, the budget solver
and the pass all build on these."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import fx

from ...transform.eligibility import called_once, screen_convs, two_d, unshared_weights, zero_padding
from ...transform.layers import Layer, find_layers
from .op import ssc_problem

Choice = tuple[int | None, int | None]  # (g, p)


@dataclass
class SSCAssignment:
    """Per-layer (g, p) for a graph, the convs left dense (name -> reason), adjustments made to
    a table's values (name -> note), and the parameter fraction these choices give the whole
    model (all parameters: conv, linear, batch norm) next to the ``target`` (a preset's nominal
    alpha, or the solver's target)."""

    choices: dict[str, Choice]
    skipped: dict[str, str]
    fraction: float
    target: float | None = None
    source: str = ""
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def meets_target(self) -> bool:
        return self.target is None or self.fraction <= self.target


def ssc_candidates(gm: fx.GraphModule, selected: Callable[[Layer], bool]) -> tuple[dict[str, Layer], dict[str, str]]:
    """The convs that can take SSC (name -> layer, graph order) and the others (name -> reason)."""
    taken, skipped = screen_convs(gm, SSC_CHECKS, selected)
    return {layer.name: layer for layer in taken}, skipped


def _dense(layer: Layer, facts) -> str | None:
    if layer.groups != 1:
        kind = "depthwise" if layer.groups == layer.in_channels == layer.out_channels else "grouped"
        return f"{kind} conv ({layer.groups} groups): SSC replaces dense convs"
    return None


SSC_CHECKS = (two_d, _dense, unshared_weights, called_once, zero_padding("SSC"))


def choice_problem(layer: Layer, choice: Choice) -> str | None:
    """Why ``layer`` stays dense under ``choice``, or None when SSC(g, p) replaces it."""
    g, p = choice
    if layer.kernel_size == (1, 1):
        if g is not None:
            return f"1x1 conv: only a pointwise choice (g=None, p) applies, got g={g}"
        if p == 1:
            return "p=1 on a 1x1 conv is the dense conv"
    elif g == 1:
        return "g=1 keeps the dense k x k conv" + (
            f" (a 1x1 branch, p={p}, would only add weights that fold into its centre tap)" if p else ""
        )
    return ssc_problem(layer.in_channels, layer.out_channels, layer.kernel_size, g, p)


def layer_weight_params(layer: Layer, choice: Choice | None) -> int:
    """Weights of ``layer`` as SSC(``choice``), or dense for None (biases unchanged, not counted)."""
    out_c, in_c, taps = layer.out_channels, layer.in_channels, layer.weight[0, 0].numel()
    if choice is None:
        return layer.weight.numel()
    g, p = choice
    return (out_c * in_c // g * taps if g else 0) + (out_c * in_c // p if p else 0)


def param_fraction(gm: fx.GraphModule, layers: Mapping[str, Layer], choices: Mapping[str, Choice]) -> float:
    """Parameters of ``gm`` with ``choices`` applied over those of ``gm`` (every parameter: conv,
    linear and batch-norm weights and biases)."""
    dense = sum(p.numel() for p in gm.parameters())
    saved = sum(
        layer_weight_params(layers[name], None) - layer_weight_params(layers[name], c) for name, c in choices.items()
    )
    return (dense - saved) / dense


def finish_assignment(
    gm: fx.GraphModule,
    candidates: dict[str, Layer],
    proposed: Mapping[str, Choice],
    skipped: dict[str, str],
    pointwise_branch: bool,
    target: float | None = None,
    source: str = "",
    notes: dict[str, str] | None = None,
) -> SSCAssignment:
    """Drop the 1x1 branch if asked, leave dense (with the reason) the layers whose choice does
    not fit, and count the parameter fraction."""
    choices = {}
    for name, layer in candidates.items():
        if name not in proposed:
            continue
        g, p = proposed[name]
        if not pointwise_branch and g is not None:
            p = None
        problem = choice_problem(layer, (g, p))
        if problem is None:
            choices[name] = (g, p)
        else:
            note = (notes or {}).get(name)
            skipped[name] = f"{problem} (after {note})" if note else problem
    skipped = {layer.name: skipped[layer.name] for layer in find_layers(gm) if layer.name in skipped}  # graph order
    notes = {name: note for name, note in (notes or {}).items() if name in choices}
    return SSCAssignment(choices, skipped, param_fraction(gm, candidates, choices), target, source, notes)
