"""Which convs a technique can take: named checks, one reason string each, shared by every
technique. A technique lists the checks it needs; :func:`screen_convs` runs them over a graph and
returns the convs that pass and, for each other conv, the first reason it fails::

    layers, skipped = screen_convs(gm, (two_d, called_once, unshared_weights, zero_padding("SSC")))
    skipped  # {'features.0': "padding mode 'reflect' (SSC pads with zeros)", ...}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import fx

from .layers import Layer, find_layers, tensor_shape


@dataclass(frozen=True)
class GraphFacts:
    """What checks need to know about the whole graph, computed once."""

    module_calls: Counter  # module path -> calls
    weight_convs: Counter  # a functional conv's weight node -> convs that use it

    @classmethod
    def of(cls, gm: fx.GraphModule) -> GraphFacts:
        calls = Counter(node.target for node in gm.graph.nodes if node.op == "call_module")
        convs = [layer.node for layer in find_layers(gm) if layer.kind == "conv"]
        weights = Counter(node.args[1] for node in convs if node.op == "call_function" and len(node.args) > 1)
        return cls(calls, weights)


Check = Callable[[Layer, GraphFacts], "str | None"]  # None: the layer passes


def two_d(layer: Layer, facts: GraphFacts) -> str | None:
    if layer.weight.dim() != 4:
        return f"{layer.weight.dim() - 2}-D conv (only 2-D convs are taken)"
    return None


def called_once(layer: Layer, facts: GraphFacts) -> str | None:
    if layer.node.op == "call_module" and facts.module_calls[layer.node.target] > 1:
        return "its module is called more than once"
    return None


def unshared_weights(layer: Layer, facts: GraphFacts) -> str | None:
    weight = layer.node.args[1] if layer.node.op == "call_function" else None
    if isinstance(weight, fx.Node) and facts.weight_convs[weight] > 1:  # a shared module, as torch.export leaves it
        return "its weights are shared with another conv"
    return None


def shape_recorded(layer: Layer, facts: GraphFacts) -> str | None:
    shape = tensor_shape(layer.node)
    if shape is None or len(shape) != 4:
        return "no shape recorded (capture propagates shapes)"
    return None


def zero_padding(op: str) -> Check:
    """The technique's op (named in the reason) pads with zeros, as its kernels do."""

    def check(layer: Layer, facts: GraphFacts) -> str | None:
        if layer.padding_mode != "zeros":
            return f"padding mode '{layer.padding_mode}' ({op} pads with zeros)"
        return None

    check.__name__ = f"zero_padding({op})"
    return check


def screen_convs(
    gm: fx.GraphModule, checks: Iterable[Check], selected: Callable[[Layer], bool] | None = None
) -> tuple[list[Layer], dict[str, str]]:
    """The convs of ``gm`` that pass every check (and ``selected``, if given), in graph order,
    and the reason of each other conv: its first failed check, else ``"not selected"``."""
    facts, checks = GraphFacts.of(gm), tuple(checks)
    taken, skipped = [], {}
    for layer in find_layers(gm):
        if layer.kind != "conv":
            continue
        reason = next((why for check in checks if (why := check(layer, facts)) is not None), None)
        if reason is None and selected is not None and not selected(layer):
            reason = "not selected"
        if reason is None:
            taken.append(layer)
        else:
            skipped[layer.name] = reason
    return taken, skipped
