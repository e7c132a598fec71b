"""Replace selected convs by structured sparse convs (``SSCConv``), initialised from their dense
weights. Which (g, p) each layer gets comes from one of three sources: a per-layer map, a preset
of the seed's tables (``presets``), or a target parameter fraction (``budget``); what a choice
is and whether a layer can take it is ``choices``.

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
from dataclasses import dataclass
from fnmatch import fnmatchcase

from torch import fx, nn

from ...config import Config
from ...errors import InputError
from ...transform.layers import Layer, find_layers
from ...transform.rewrite import (
    PassResult,
    conv_module,
    copy_graph_module,
    finish_rewrite,
    inserted_ops,
    replace_layer,
    select_layers,
)
from .choices import Choice, SSCAssignment, finish_assignment, ssc_candidates
from .op import INITS, SSCConv

NONDIVIDING = ("skip", "nearest")


@dataclass(frozen=True)
class SSCConfig(Config):
    """Where SSC goes and with which (g, p); give exactly one of ``per_layer``, ``preset`` and
    ``target_fraction``.

    per_layer: glob of layer names -> (g, p), first match wins: ``{"features.*": (4, 2)}``
        (stored as a tuple of (glob, g, p)).
    preset: a table of the seed by name (``presets.PRESETS``), matched by filter count.
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
            from .presets import get_preset

            get_preset(self.preset)  # an unknown name fails here, listing the known ones
        if self.init not in INITS:
            raise InputError(f"SSC init must be one of {', '.join(INITS)}, got '{self.init}'")
        if self.nondividing not in NONDIVIDING:
            raise InputError(f"nondividing must be one of {', '.join(NONDIVIDING)}, got '{self.nondividing}'")

    @classmethod
    def exact(cls, choices: Mapping[str, Choice], **options) -> SSCConfig:
        """A config that applies ``choices`` (layer name -> (g, p)) to exactly those layers: what
        a plan records to rebuild the same graph, whichever source chose them."""
        per_layer = tuple((glob.escape(name), *choice) for name, choice in choices.items())
        return cls(per_layer=per_layer, layers=tuple(glob.escape(name) for name in choices), **options)


def _opt_int(value) -> int | None:
    return None if value is None else int(value)


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
        from .presets import assign_preset

        return assign_preset(gm, config.preset, selected, config.pointwise_branch, config.nondividing)
    if config.target_fraction is not None:
        from .budget import solve_budget

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


def _rewrite(gm: fx.GraphModule, layer: Layer, choice: Choice, init: str) -> str:
    g, p = choice
    conv: nn.Conv2d = conv_module(gm, layer)
    op = SSCConv.from_conv(conv, g, p, layer_name=layer.name, init=init)
    return replace_layer(gm, layer, op, "ssc_")


def apply_plan(gm: fx.GraphModule, plan) -> PassResult:
    """Rewrite ``gm`` as ``plan`` says. SSC has no masks: the config lists every layer's exact
    (g, p), and all of them must fit."""
    from ...plan import plan_config, unescape

    config = plan_config(SSCConfig, plan.config)
    result = insert_ssc(gm, config)
    by_glob = {glob.escape(name): name for name in result.inserted}
    missing = [pattern for pattern, *_ in config.per_layer if pattern not in by_glob]
    if missing:
        reasons = "; ".join(f"{pattern}: {result.skipped.get(unescape(pattern), 'no such layer')}" for pattern in missing)
        raise InputError(f"the plan does not fit this model: {reasons}")
    return result
