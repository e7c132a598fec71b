"""One view of the conv and linear layers of a captured graph, whatever form they take.

torch.fx keeps layers as ``call_module`` nodes (``nn.Conv2d``); torch.export turns them into
``call_function`` nodes (``aten.conv2d``) whose weights are ``get_attr`` nodes. Passes and
accounting see both through :class:`Layer`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

_CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_FUNCTIONS = {
    F.conv1d,
    F.conv2d,
    F.conv3d,
    torch.conv1d,
    torch.conv2d,
    torch.conv3d,
    torch.ops.aten.conv1d.default,
    torch.ops.aten.conv2d.default,
    torch.ops.aten.conv3d.default,
}
_LINEAR_FUNCTIONS = {F.linear, torch.ops.aten.linear.default}


@dataclass(frozen=True)
class Layer:
    """A conv or linear layer: its node, weights and geometry.

    ``name`` is the module path (``features.0``) for both capture methods.
    """

    name: str
    kind: str  # "conv" or "linear"
    node: fx.Node
    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] | str = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    padding_mode: str = "zeros"  # a conv module's: "reflect", "replicate" and "circular" pad otherwise

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return tuple(self.weight.shape[2:])

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return tensor_shape(self.node.args[0])

    @property
    def output_shape(self) -> tuple[int, ...] | None:
        return tensor_shape(self.node)


def tensor_shape(node) -> tuple[int, ...] | None:
    """The shape that shape propagation recorded on ``node``, or None."""
    meta = getattr(node, "meta", {}).get("tensor_meta")
    shape = getattr(meta, "shape", None)
    if shape is None:
        value = getattr(node, "meta", {}).get("val")  # torch.export records fake tensors here
        shape = getattr(value, "shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None


def output_shape(gm: fx.GraphModule) -> tuple[int, ...] | None:
    """The shape of the graph's (first) output."""
    out = next(n for n in reversed(gm.graph.nodes) if n.op == "output").args[0]
    if isinstance(out, (tuple, list)):
        out = out[0] if out else None
    return tensor_shape(out) if isinstance(out, fx.Node) else None


def find_layers(gm: fx.GraphModule) -> list[Layer]:
    """Every conv and linear layer of ``gm`` in graph order."""
    layers = []
    for node in gm.graph.nodes:
        layer = layer_of(gm, node)
        if layer is not None:
            layers.append(layer)
    return layers


def layer_of(gm: fx.GraphModule, node: fx.Node) -> Layer | None:
    """The layer that ``node`` computes, or None when it is no conv or linear."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, _CONV_MODULES):
            return Layer(
                name=str(node.target),
                kind="conv",
                node=node,
                weight=module.weight,
                bias=module.bias,
                stride=tuple(module.stride),
                padding=module.padding if isinstance(module.padding, str) else tuple(module.padding),
                dilation=tuple(module.dilation),
                groups=module.groups,
                padding_mode=module.padding_mode,
            )
        if isinstance(module, nn.Linear):
            return Layer(str(node.target), "linear", node, module.weight, module.bias)
        return None
    if node.op != "call_function":
        return None
    if node.target in _CONV_FUNCTIONS:
        return _functional_conv(gm, node)
    if node.target in _LINEAR_FUNCTIONS:
        weight_node = _arg(node, 1, "weight")
        weight = constant(gm, weight_node)
        if weight is None:
            return None
        bias = constant(gm, _arg(node, 2, "bias"))
        return Layer(_layer_name(weight_node, node), "linear", node, weight, bias)
    return None


def _functional_conv(gm: fx.GraphModule, node: fx.Node) -> Layer | None:
    weight_node = _arg(node, 1, "weight")
    weight = constant(gm, weight_node)
    if weight is None:  # weights computed at run time: not a layer we can transform
        return None
    spatial = weight.dim() - 2
    return Layer(
        name=_layer_name(weight_node, node),
        kind="conv",
        node=node,
        weight=weight,
        bias=constant(gm, _arg(node, 2, "bias")),
        stride=_expand(_arg(node, 3, "stride", 1), spatial),
        padding=_padding(_arg(node, 4, "padding", 0), spatial),
        dilation=_expand(_arg(node, 5, "dilation", 1), spatial),
        groups=int(_arg(node, 6, "groups", 1)),
    )


def _arg(node: fx.Node, index: int, name: str, default=None):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def constant(gm: fx.GraphModule, node) -> torch.Tensor | None:
    """The tensor a ``get_attr`` node reads, or None for any other node."""
    if isinstance(node, fx.Node) and node.op == "get_attr":
        value = gm
        for part in str(node.target).split("."):
            value = getattr(value, part)
        return value if isinstance(value, torch.Tensor) else None
    return None


def _layer_name(weight_node, node: fx.Node) -> str:
    target = str(weight_node.target) if isinstance(weight_node, fx.Node) else ""
    return target[: -len(".weight")] if target.endswith(".weight") else node.name


def _expand(value, n: int) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value) if len(value) == n else tuple(int(value[0]) for _ in range(n))
    return tuple(int(value) for _ in range(n))


def _padding(value, n: int):
    return value if isinstance(value, str) else _expand(value, n)
