"""What every pass returns, and the layer selection they share."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from torch import fx

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
