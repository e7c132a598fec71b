"""Parameters and multiply-accumulates (MACs) per layer and in total.

MACs are counted per image for conv and linear layers, the layers that hold the arithmetic:
- conv: ``C_out * prod(output spatial) * (C_in / groups) * prod(kernel)``
- linear: ``(output elements per image) * in_features``
Pooling, activations, batch norm (folded into convs for deployment) and additions are not
counted, as in the papers this tool reproduces.

An op that a pass inserts reports its own cost (``sparsify_cnn.ops.CostedOp``): dense MACs
(what the layer it replaced would do) and performed MACs (exact for static structure, measured
on the data that flowed through it for data-dependent ops).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from torch import fx

from ..ops.base import CostedOp
from .capture import Captured
from .layers import Layer, find_layers, tensor_shape


@dataclass(frozen=True)
class LayerCost:
    """One layer's row: shapes (batch included), parameters and MACs per image."""

    name: str
    kind: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: int
    macs: int
    performed_macs: int
    exact: bool = True

    @property
    def saved_fraction(self) -> float:
        return 1.0 - self.performed_macs / self.macs if self.macs else 0.0


@dataclass(frozen=True)
class Accounting:
    """Per-layer costs of a captured model and the totals."""

    layers: tuple[LayerCost, ...]
    total_params: int

    @property
    def total_macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def total_performed_macs(self) -> int:
        return sum(layer.performed_macs for layer in self.layers)

    def layer(self, name: str) -> LayerCost:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {
            "total_params": self.total_params,
            "total_macs": self.total_macs,
            "total_performed_macs": self.total_performed_macs,
            "layers": [asdict(layer) for layer in self.layers],
        }


def account(captured: Captured | fx.GraphModule) -> Accounting:
    """Count parameters and MACs of every conv, linear and inserted op of a captured model.

    Example::

        acc = account(capture(build("lenet"), (1, 1, 28, 28)))
        acc.total_macs  # 2_293_000
    """
    gm = captured.graph_module if isinstance(captured, Captured) else captured
    rows = []
    layers = {layer.node: layer for layer in find_layers(gm)}
    for node in gm.graph.nodes:
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(module, CostedOp):  # before layers: an inserted op may subclass a conv
            rows.append(_op_cost(node, module))
        elif node in layers:
            rows.append(_layer_cost(layers[node]))
    total_params = sum(p.numel() for p in gm.parameters())
    return Accounting(tuple(rows), total_params)


def layer_macs(layer: Layer) -> int:
    """Dense MACs per image of a conv or linear layer (shapes must have been propagated)."""
    out = _shape(layer.output_shape, layer.name)
    per_image = math.prod(out[1:])
    if layer.kind == "conv":
        return per_image * (layer.weight.shape[1]) * math.prod(layer.kernel_size)
    return per_image * layer.weight.shape[1]


def _layer_cost(layer: Layer) -> LayerCost:
    macs = layer_macs(layer)
    params = layer.weight.numel() + (layer.bias.numel() if layer.bias is not None else 0)
    return LayerCost(
        name=layer.name,
        kind=layer.kind,
        input_shape=_shape(layer.input_shape, layer.name),
        output_shape=_shape(layer.output_shape, layer.name),
        params=params,
        macs=macs,
        performed_macs=macs,
    )


def _op_cost(node: fx.Node, module: CostedOp) -> LayerCost:
    input_shape = _shape(tensor_shape(node.args[0]), node.target)
    output_shape = _shape(tensor_shape(node), node.target)
    cost = module.cost(input_shape, output_shape)
    return LayerCost(
        name=getattr(module, "layer_name", "") or str(node.target),  # the layer it replaced
        kind=module.kind,
        input_shape=input_shape,
        output_shape=output_shape,
        params=sum(p.numel() for p in module.parameters()),
        macs=cost.dense_macs,
        performed_macs=cost.performed_macs,
        exact=cost.exact,
    )


def _shape(shape, name) -> tuple[int, ...]:
    if shape is None:
        raise ValueError(f"layer '{name}' has no shape: propagate shapes first (capture does)")
    return shape
