"""The seed's per-stage SSC tables (seed 004, the supplementary material of Verma et al.) as
data, and their mapping onto a captured model by filter count.

A preset gives (g, p) for 3x3 convs and p for 1x1 convs by their number of filters (output
channels), as the seed states them; every layer with that many filters takes them. Values are
copied as printed, including those that divide no layer's channels (15 and 25): such layers stay
dense unless ``nondividing="nearest"`` asks for the nearest divisor, which is then noted. The
fraction a preset gives is counted on the model itself (every parameter: conv, linear, batch
norm) and reported next to the seed's nominal alpha; they differ (see ``Preset.note``).

    assignment = assign_preset(capture(build("vgg19"), (1, 3, 32, 32)).graph_module, "vgg19-cifar10-10")
    assignment.fraction, assignment.target      # counted here, the seed's alpha
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import fx

from ...errors import InputError
from ...transform.layers import Layer
from .choices import Choice, SSCAssignment, finish_assignment, ssc_candidates
from .op import divisors


@dataclass(frozen=True)
class Preset:
    """One row of the seed's tables: (g, p) of 3x3 convs and p of 1x1 convs by filter count."""

    name: str
    model: str  # the zoo model the seed gives it for
    dataset: str
    alpha: float  # the seed's nominal fraction of parameters kept ("winning ticket")
    kxk: dict[int, Choice]  # 3x3 convs: filters -> (g, p)
    pointwise: dict[int, int] = field(default_factory=dict)  # 1x1 convs: filters -> p
    source: str = ""
    note: str = ""


def _stages(filters, g, p) -> dict[int, Choice]:
    return {f: (gi, pi) for f, gi, pi in zip(filters, g, p, strict=True)}


_VGG = (64, 128, 256, 512)
_RESNET32 = (32, 64, 128)
_RESNET50_3X3 = (64, 128, 256, 512)
_RESNET50_1X1 = (64, 128, 256, 512, 1024, 2048)
_VGG_SOURCE = "seed 004, section 1.1 (VGG-19, CIFAR-10)"
_RESNET32_SOURCE = "seed 004, Table 1 (ResNet-32, CIFAR-10)"
_RESNET32_NOTE = (
    "Table 1 prints the p column before the g column; the seed's other ResNet-32 settings (section 1.3, "
    "Table 3) put the larger values in g, so the columns may be swapped: the '-swapped' preset reads them so"
)
_RESNET50_SOURCE = "seed 004, section 1.4 (ResNet-50, ImageNet)"

_TABLE = [
    Preset("vgg19-cifar10-10", "vgg19", "cifar10", 0.10, _stages(_VGG, (1, 2, 4, 16), (1, 2, 2, 2)), source=_VGG_SOURCE),
    Preset("vgg19-cifar10-5", "vgg19", "cifar10", 0.05, _stages(_VGG, (1, 1, 4, 16), (1, 2, 4, 16)), source=_VGG_SOURCE),
    Preset("vgg19-cifar10-2", "vgg19", "cifar10", 0.02, _stages(_VGG, (1, 4, 8, 64), (1, 4, 8, 25)), source=_VGG_SOURCE,
           note="p=25 divides no layer's channels (512)"),
    Preset("resnet32-cifar10-10", "resnet32", "cifar10", 0.10, _stages(_RESNET32, (2, 4, 4), (2, 4, 15)),
           source=_RESNET32_SOURCE, note=_RESNET32_NOTE + "; p=15 divides no layer's channels (128)"),
    Preset("resnet32-cifar10-5", "resnet32", "cifar10", 0.05, _stages(_RESNET32, (2, 8, 32), (2, 8, 64)),
           source=_RESNET32_SOURCE, note=_RESNET32_NOTE),
    Preset("resnet32-cifar10-2", "resnet32", "cifar10", 0.02, _stages(_RESNET32, (8, 32, 64), (16, 32, 64)),
           source=_RESNET32_SOURCE, note=_RESNET32_NOTE),
    Preset("resnet32-cifar10-10-swapped", "resnet32", "cifar10", 0.10, _stages(_RESNET32, (2, 4, 15), (2, 4, 4)),
           source=_RESNET32_SOURCE + ", g and p columns swapped", note="g=15 divides no layer's channels (128)"),
    Preset("resnet32-cifar10-5-swapped", "resnet32", "cifar10", 0.05, _stages(_RESNET32, (2, 8, 64), (2, 8, 32)),
           source=_RESNET32_SOURCE + ", g and p columns swapped"),
    Preset("resnet32-cifar10-2-swapped", "resnet32", "cifar10", 0.02, _stages(_RESNET32, (16, 32, 64), (8, 32, 64)),
           source=_RESNET32_SOURCE + ", g and p columns swapped"),
    Preset("resnet50-imagenet-40", "resnet50", "imagenet", 0.40, _stages(_RESNET50_3X3, (1, 1, 4, 8), (1, 2, 2, 2)),
           dict(zip(_RESNET50_1X1, (1, 1, 2, 2, 2, 2))), source=_RESNET50_SOURCE),
    Preset("resnet50-imagenet-20", "resnet50", "imagenet", 0.20, _stages(_RESNET50_3X3, (1, 1, 4, 8), (1, 2, 4, 8)),
           dict(zip(_RESNET50_1X1, (1, 1, 4, 4, 8, 8))), source=_RESNET50_SOURCE),
]  # fmt: skip

PRESETS: dict[str, Preset] = {preset.name: preset for preset in _TABLE}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown SSC preset '{name}'; choose one of: {', '.join(PRESETS)}") from None


def assign_preset(
    gm: fx.GraphModule,
    name: str,
    selected: Callable[[Layer], bool] = lambda layer: True,
    pointwise_branch: bool = True,
    nondividing: str = "skip",
) -> SSCAssignment:
    """Per-layer (g, p) of preset ``name`` on ``gm`` by filter count, the layers it leaves dense
    and why, and the parameter fraction it gives next to the seed's alpha (``target``)."""
    preset = get_preset(name)
    candidates, skipped = ssc_candidates(gm, selected)
    proposed, notes = {}, {}
    for layer_name, layer in candidates.items():
        filters, kernel = layer.out_channels, layer.kernel_size
        if kernel == (1, 1):
            p = preset.pointwise.get(filters)
            if p is None:
                skipped[layer_name] = f"1x1 conv: the preset gives no pointwise p for {filters} filters"
                continue
            choice: Choice = (None, p)
        elif kernel == (3, 3):
            if filters not in preset.kxk:
                skipped[layer_name] = f"the preset gives no (g, p) for 3x3 convs of {filters} filters"
                continue
            choice = preset.kxk[filters]
        else:
            skipped[layer_name] = f"{'x'.join(map(str, kernel))} conv: the preset covers 3x3 and 1x1 convs"
            continue
        if nondividing == "nearest":
            choice, note = _nearest_divisors(layer, choice)
            if note:
                notes[layer_name] = note
        proposed[layer_name] = choice
    return finish_assignment(
        gm, candidates, proposed, skipped, pointwise_branch, target=preset.alpha, source=f"preset {name}", notes=notes
    )


def _nearest_divisors(layer: Layer, choice: Choice) -> tuple[Choice, str]:
    """``choice`` with every value that does not divide both channel counts replaced by the
    nearest divisor of their gcd (the smaller one on a tie: fewer weights removed)."""
    allowed = divisors(math.gcd(layer.in_channels, layer.out_channels))
    values, changes = [], []
    for label, value in zip("gp", choice):
        if value is not None and value not in allowed:
            nearest = min(allowed, key=lambda d: (abs(d - value), d))
            changes.append(f"{label}={value} -> {nearest}")
            value = nearest
        values.append(value)
    note = f"{', '.join(changes)} (nearest divisor of gcd(C, T) = {allowed[-1]})" if changes else ""
    return (values[0], values[1]), note
