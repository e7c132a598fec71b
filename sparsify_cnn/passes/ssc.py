"""Replace selected convs by structured sparse convs (``SSCConv``), initialised from their dense
weights. Which (g, p) each layer gets comes from one of three sources: a per-layer map, a preset
of the seed's tables (``ssc_presets``), or a target parameter fraction (``search.ssc_budget``).

A choice is ``(g, p)``: ``g`` groups for the k x k branch and ``p`` groups for the interleaved
1 x 1 branch, ``None`` for a branch left out. 1x1 convs take only pointwise choices ``(None, p)``.
Layers that cannot take SSC are left dense with a reason: grouped and depthwise convs, convs
whose module is shared, choices whose g or p do not divide the channels, and choices that are
the dense conv (g=1; ``(1, p)`` too, whose 1x1 branch only adds weights that fold into the
dense kernel's centre).
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from torch import fx, nn

from ..errors import InputError
from ..ops.ssc import INITS, SSCConv, ssc_problem
from ..transform.eligibility import called_once, screen_convs, two_d, unshared_weights, zero_padding
from ..transform.layers import Layer, find_layers
from .base import (
    PassResult,
    conv_module,
    copy_graph_module,
    finish_rewrite,
    inserted_ops,
    replace_layer,
    select_layers,
)

Choice = tuple[int | None, int | None]  # (g, p)
NONDIVIDING = ("skip", "nearest")


@dataclass(frozen=True)
class SSCConfig:
    """Where SSC goes and with which (g, p); give exactly one of ``per_layer``, ``preset`` and
    ``target_fraction``.

    per_layer: glob of layer names -> (g, p), first match wins: ``{"features.*": (4, 2)}``
        (stored as a tuple of (glob, g, p)).
    preset: a table of the seed by name (``ssc_presets.PRESETS``), matched by filter count.
    target_fraction: the model's parameter fraction to reach (conv, linear and batch-norm
        parameters), solved per layer by ``search.ssc_budget``.
    pointwise_branch: add the interleaved 1x1 branch to k x k convs; False drops every p of
        k x k choices (R = 1/g). 1x1 convs made pointwise group convs are not affected.
    pointwise_convs: with ``target_fraction``, also turn 1x1 convs into pointwise group convs.
    nondividing: with ``preset``, a table value that does not divide a layer's channels either
        leaves the layer dense ("skip") or is replaced by the nearest divisor ("nearest"; the
        change is noted in the assignment).
    init: "project" (the layer starts as the dense conv times its structure mask) or "zero" (the
        1x1 branch starts at zero: the dense conv masked to its k x k groups).
    layers: glob patterns of layer names to consider (none: every conv).
    """

    per_layer: tuple[tuple[str, int | None, int | None], ...] | Mapping[str, Choice] = ()
    preset: str | None = None
    target_fraction: float | None = None
    pointwise_branch: bool = True
    pointwise_convs: bool = True
    nondividing: str = "skip"
    init: str = "project"
    layers: tuple[str, ...] = ()
    version: int = 1

    def __post_init__(self):
        per_layer = self.per_layer
        if isinstance(per_layer, Mapping):
            per_layer = tuple((glob, *choice) for glob, choice in per_layer.items())
        per_layer = tuple((str(glob), _opt_int(g), _opt_int(p)) for glob, g, p in per_layer)
        object.__setattr__(self, "per_layer", per_layer)
        object.__setattr__(self, "layers", tuple(self.layers))
        sources = {"per_layer": per_layer or None, "preset": self.preset, "target_fraction": self.target_fraction}
        given = [name for name, value in sources.items() if value is not None]
        if len(given) != 1:
            raise InputError(
                f"SSC needs exactly one of per_layer, preset, target_fraction; got {', '.join(given) or 'none'}"
            )
        if self.target_fraction is not None and not 0 < self.target_fraction <= 1:
            raise InputError(f"target fraction must be in (0, 1], got {self.target_fraction}")
        if self.preset is not None:
            from .ssc_presets import get_preset

            get_preset(self.preset)  # an unknown name fails here, listing the known ones
        if self.init not in INITS:
            raise InputError(f"SSC init must be one of {', '.join(INITS)}, got '{self.init}'")
        if self.nondividing not in NONDIVIDING:
            raise InputError(f"nondividing must be one of {', '.join(NONDIVIDING)}, got '{self.nondividing}'")

    def to_dict(self) -> dict:
        return {
            "per_layer": [list(entry) for entry in self.per_layer],
            "preset": self.preset,
            "target_fraction": self.target_fraction,
            "pointwise_branch": self.pointwise_branch,
            "pointwise_convs": self.pointwise_convs,
            "nondividing": self.nondividing,
            "init": self.init,
            "layers": list(self.layers),
            "version": self.version,
        }

    @classmethod
    def exact(cls, choices: Mapping[str, Choice], **options) -> SSCConfig:
        """A config that applies ``choices`` (layer name -> (g, p)) to exactly those layers: what
        a plan records to rebuild the same graph, whichever source chose them."""
        per_layer = tuple((glob.escape(name), *choice) for name, choice in choices.items())
        return cls(per_layer=per_layer, layers=tuple(glob.escape(name) for name in choices), **options)

    @classmethod
    def from_dict(cls, data: dict) -> SSCConfig:
        data = dict(data)
        data["per_layer"] = tuple(tuple(entry) for entry in data.get("per_layer", ()))
        data["layers"] = tuple(data.get("layers", ()))
        return cls(**data)


def _opt_int(value) -> int | None:
    return None if value is None else int(value)


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


@dataclass
class SSCPassResult(PassResult):
    """``PassResult`` plus the assignment the pass applied."""

    assignment: SSCAssignment | None = None


def insert_ssc(
    gm: fx.GraphModule,
    config: SSCConfig,
    filter_fn: Callable[[Layer], bool] | None = None,
    inplace: bool = False,
) -> SSCPassResult:
    """Replace the selected convs by ``SSCConv`` layers initialised from their dense weights.

    Example::

        gm = capture(build("vgg19"), (1, 3, 32, 32)).graph_module
        result = insert_ssc(gm, SSCConfig(preset="vgg19-cifar10-10"))
        result.assignment.fraction   # parameters kept, against the dense model
    """
    if not inplace:
        gm = copy_graph_module(gm)
    assignment = assign(gm, config, filter_fn)
    result = SSCPassResult(gm, skipped=dict(assignment.skipped), assignment=assignment)
    for layer in find_layers(gm):
        if layer.name in assignment.choices:
            result.inserted[layer.name] = _rewrite(gm, layer, assignment.choices[layer.name], config.init)
    if result.inserted:
        finish_rewrite(gm)
    return result


def ssc_ops(gm: fx.GraphModule) -> dict[str, SSCConv]:
    """The SSC layers of a rewritten graph module, by layer name, in graph order."""
    return inserted_ops(gm, SSCConv)


def assign(gm: fx.GraphModule, config: SSCConfig, filter_fn: Callable[[Layer], bool] | None = None) -> SSCAssignment:
    """The (g, p) of every layer ``config`` transforms in ``gm``, without rewriting it."""
    selected = select_layers(config.layers, filter_fn)
    if config.preset is not None:
        from .ssc_presets import assign_preset

        return assign_preset(gm, config.preset, selected, config.pointwise_branch, config.nondividing)
    if config.target_fraction is not None:
        from ..search.ssc_budget import solve_budget

        return solve_budget(gm, config.target_fraction, selected, config.pointwise_branch, config.pointwise_convs)
    candidates, skipped = ssc_candidates(gm, selected)
    proposed = {}
    for name in candidates:
        match = next(((g, p) for glob, g, p in config.per_layer if fnmatchcase(name, glob)), None)
        if match is None:
            skipped[name] = "no (g, p) given for it"
        else:
            proposed[name] = match
    return finish_assignment(gm, candidates, proposed, skipped, config.pointwise_branch, source="per-layer map")


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


def _rewrite(gm: fx.GraphModule, layer: Layer, choice: Choice, init: str) -> str:
    g, p = choice
    conv: nn.Conv2d = conv_module(gm, layer)
    op = SSCConv.from_conv(conv, g, p, layer_name=layer.name, init=init)
    return replace_layer(gm, layer, op, "ssc_")
