"""What every pass returns, and the layer selection they share."""

from __future__ import annotations

import copy
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TypeVar

from torch import fx, nn

from .layers import Layer

T = TypeVar("T", bound=nn.Module)


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


def replace_layer(gm: fx.GraphModule, layer: Layer, op: nn.Module, prefix: str) -> str:
    """Put ``op`` (a module called on the layer's input) in place of ``layer``'s node, drop the
    weights only that node read, and return the new submodule's name (``prefix`` + layer name)."""
    name = free_name(gm, prefix + layer.name.replace(".", "_"))
    gm.add_submodule(name, op)
    graph = gm.graph
    with graph.inserting_before(layer.node):
        node = graph.call_module(name, (layer.node.args[0],))
    node.meta = dict(layer.node.meta)
    layer.node.replace_all_uses_with(node)
    inputs = layer.node.all_input_nodes
    graph.erase_node(layer.node)
    for orphan in inputs:  # weights read only by the erased layer
        if orphan.op == "get_attr" and not orphan.users:
            graph.erase_node(orphan)
    return name


def finish_rewrite(gm: fx.GraphModule) -> None:
    """Drop submodules nothing calls any more, check the graph and regenerate its code."""
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()


def inserted_ops(gm: fx.GraphModule, kind: type[T]) -> dict[str, T]:
    """The inserted ops of class ``kind`` in a rewritten graph module, by layer name, in graph order."""
    ops = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            if isinstance(module, kind):
                ops[module.layer_name] = module
    return ops


def no_layer_message(action: str, skipped: dict[str, str], hint: str, empty: str = "it has no convs") -> str:
    """One line under 300 characters, whatever the model, on why no layer could ``action``: how
    many layers were checked, the commonest reasons with their counts, and ``hint``."""
    head = f"no layer of the model can {action}"
    if not skipped:
        return f"{head}: {empty}"
    counts = Counter(skip_kind(why) for why in skipped.values()).most_common()
    layers = f"{len(skipped)} conv{'s' if len(skipped) > 1 else ''}"
    for shown, width in ((3, 300), (2, 300), (2, 100), (1, 300), (1, 100), (1, 40)):
        reasons = "; ".join(f"{n}x {_clip(kind, width)}" for kind, n in counts[:shown])
        others = len(counts[shown:])
        more = f"; {others} other reason{'s' if others > 1 else ''}" if others else ""
        line = f"{head} ({layers} checked: {reasons}{more}); {hint}"
        if len(line) < 300:
            break
    return line


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def skip_kind(reason: str) -> str:
    """A skip reason without node names, counts and remarks, so that layers skipped alike count
    together: "its output reaches 'x' (Hardswish) before any ReLU" -> "its output reaches
    Hardswish before any ReLU"; "depthwise conv (96 groups): ..." -> "depthwise conv: ..."."""
    reason = re.sub(r"'[^']*' \(([^)]*)\)", r"\1", reason)  # 'node' (Kind) -> Kind
    reason = re.sub(r"'[^']*'", "'...'", reason)
    reason = re.sub(r" \([^()]*\d[^()]*\)", "", reason)  # sizes and counts: "(96 groups)", "(C=1)"
    return re.sub(r" \([^()]*\)$", "", reason)
