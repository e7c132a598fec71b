"""What every pass returns, and the layer selection they share."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from torch import fx, nn

from ..transform.layers import Layer


@dataclass
class PassResult:
    """The rewritten graph module, the ops inserted (layer name -> op module path) and the
    layers left alone (layer name -> reason)."""

    graph_module: fx.GraphModule
    inserted: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def modified(self) -> bool:
        return bool(self.inserted)


def select_layers(
    patterns: Iterable[str] = (), filter_fn: Callable[[Layer], bool] | None = None
) -> Callable[[Layer], bool]:
    """A predicate: the layer's name matches one of the glob ``patterns`` (all when none) and
    ``filter_fn`` (if given) accepts it. ``select_layers(["features.*"])``"""
    patterns = tuple(patterns)

    def selected(layer: Layer) -> bool:
        if patterns and not any(fnmatchcase(layer.name, p) for p in patterns):
            return False
        return filter_fn is None or filter_fn(layer)

    return selected


def conv_module(gm: fx.GraphModule, layer: Layer) -> nn.Conv2d:
    """The layer's conv as an ``nn.Conv2d`` (the module itself for fx captures, a new module
    holding the same weights for torch.export captures)."""
    if layer.node.op == "call_module":
        return gm.get_submodule(layer.node.target)
    conv = nn.Conv2d(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=layer.groups,
        bias=layer.bias is not None,
    )
    conv.weight = nn.Parameter(layer.weight.detach(), requires_grad=layer.weight.requires_grad)
    if layer.bias is not None:
        conv.bias = nn.Parameter(layer.bias.detach(), requires_grad=layer.bias.requires_grad)
    return conv


def free_name(gm: fx.GraphModule, base: str) -> str:
    """``base``, or ``base_2``, ``base_3``... whichever is not an attribute of ``gm`` yet."""
    name, i = base, 1
    while hasattr(gm, name):
        i += 1
        name = f"{base}_{i}"
    return name


def copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A deep copy of ``gm`` (passes rewrite copies unless told to work in place)."""
    with warnings.catch_warnings():  # torch warns about its own tree specs in exported graphs
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(gm)
