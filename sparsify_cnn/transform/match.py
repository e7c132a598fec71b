"""Find convs whose output reaches a ReLU: conv [+ bias] [-> batch norm] [+ residual] -> ReLU.

Works on module-level (fx) and aten-level (torch.export) graphs, with module, functional,
method and in-place ReLU variants. Every conv that does not match gets the reason why.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from .layers import Layer, constant, find_layers, tensor_shape

_RELU_FUNCTIONS = {
    F.relu,
    torch.relu,
    torch.relu_,
    torch.ops.aten.relu.default,
    torch.ops.aten.relu_.default,
}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add, torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor}
_BN_MODULES = (nn.BatchNorm2d,)
_MAX_POOL_FUNCTIONS = {F.max_pool2d, torch.max_pool2d, torch.ops.aten.max_pool2d.default}


@dataclass
class ConvReluChain:
    """A conv and the nodes between it and its ReLU."""

    layer: Layer
    relu: fx.Node
    nodes: list[fx.Node]  # conv ... relu, in graph order
    bias: torch.Tensor | None = None  # a per-channel constant added after the conv
    norm: nn.Module | None = None  # batch norm in eval mode
    residual_add: fx.Node | None = None  # the add of another tensor before the ReLU

    @property
    def residual(self) -> fx.Node | None:
        """The tensor the residual add brings in (read now: earlier rewrites may replace it)."""
        if self.residual_add is None:
            return None
        return next(a for a in self.residual_add.args if a not in self.nodes)
    pool: fx.Node | None = None  # a max pool between conv and ReLU (they commute: ReLU moves up)


@dataclass
class MatchResult:
    chains: list[ConvReluChain] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # layer name -> reason


def find_conv_relu(gm: fx.GraphModule) -> MatchResult:
    """Every 2-D conv of ``gm`` whose output flows (alone) into a ReLU, and why the rest don't."""
    result = MatchResult()
    module_calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module_calls[node.target] = module_calls.get(node.target, 0) + 1
    for layer in find_layers(gm):
        if layer.kind != "conv":
            continue
        reason = _unsupported(layer, module_calls)
        if reason is None:
            chain_or_reason = _follow(gm, layer)
            if isinstance(chain_or_reason, ConvReluChain):
                result.chains.append(chain_or_reason)
                continue
            reason = chain_or_reason
        result.skipped[layer.name] = reason
    _one_chain_per_relu(result)
    return result


def _one_chain_per_relu(result: MatchResult) -> None:
    """Two convs can meet at one ReLU through a residual add: keep the costlier one."""
    by_relu: dict[fx.Node, list[ConvReluChain]] = {}
    for chain in result.chains:
        by_relu.setdefault(chain.relu, []).append(chain)
    for chains in by_relu.values():
        if len(chains) < 2:
            continue
        keep = max(chains, key=lambda c: c.layer.weight[0].numel())
        for chain in chains:
            if chain is not keep:
                result.chains.remove(chain)
                result.skipped[chain.layer.name] = (
                    f"shares its ReLU with '{keep.layer.name}' through a residual add (one conv per ReLU)"
                )


def _unsupported(layer: Layer, module_calls: dict[str, int]) -> str | None:
    if layer.weight.dim() != 4:
        return f"{layer.weight.dim() - 2}-D conv (only 2-D convs are supported)"
    if layer.node.op == "call_module" and module_calls.get(layer.node.target, 0) > 1:
        return "its module is called more than once"
    if tensor_shape(layer.node) is None:
        return "no shape recorded (capture propagates shapes)"
    return None


def _follow(gm: fx.GraphModule, layer: Layer) -> ConvReluChain | str:
    chain = ConvReluChain(layer=layer, relu=layer.node, nodes=[layer.node])
    node = layer.node
    while True:
        users = list(node.users)
        if len(users) != 1:
            return "its output has several users before any ReLU" if users else "its output is unused"
        user = users[0]
        if _is_relu(gm, user):
            chain.relu = user
            chain.nodes.append(user)
            return chain
        if chain.pool is None and _is_max_pool(gm, user):
            chain.pool = user  # max(relu(x)) == relu(max(x)): the ReLU can move before the pool
            chain.nodes.append(user)
            node = user
            continue
        if chain.pool is not None:
            return f"its output reaches '{user.name}' ({_describe(gm, user)}) after a max pool"
        if chain.norm is None and chain.residual_add is None and (norm := _batch_norm(gm, user, node)) is not None:
            if isinstance(norm, str):
                return norm
            chain.norm = norm
        elif _is_add(user):
            other = user.args[1] if user.args[0] is node else user.args[0]
            constant = _per_channel_constant(gm, other, layer.out_channels)
            if constant is not None and chain.norm is None and chain.bias is None and chain.residual_add is None:
                chain.bias = constant
            elif isinstance(other, fx.Node) and chain.residual_add is None and constant is None:
                chain.residual_add = user
            else:
                return f"its output reaches '{user.name}' ({_describe(gm, user)}) before any ReLU"
        else:
            return f"its output reaches '{user.name}' ({_describe(gm, user)}) before any ReLU"
        chain.nodes.append(user)
        node = user


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _is_max_pool(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), nn.MaxPool2d)
    return node.op == "call_function" and node.target in _MAX_POOL_FUNCTIONS


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
        return len(node.args) == 2 and node.kwargs.get("alpha", 1) == 1
    return node.op == "call_method" and node.target in ("add", "add_") and len(node.args) == 2


def _batch_norm(gm: fx.GraphModule, node: fx.Node, source: fx.Node) -> nn.Module | str | None:
    """The eval-mode batch norm that ``node`` applies, a reason it cannot be used, or None."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if not isinstance(module, _BN_MODULES):
            return None
        if module.training or not module.track_running_stats:
            return f"batch norm '{node.target}' uses batch statistics (train mode)"
        return module
    if node.op != "call_function" or node.args[0] is not source:
        return None
    if node.target is torch.ops.aten.batch_norm.default:
        names = ("weight", "bias", "running_mean", "running_var", "training", "momentum", "eps")
    elif node.target is F.batch_norm:
        names = ("running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    else:
        return None
    args = dict(zip(names, node.args[1:]))
    args.update({k: v for k, v in node.kwargs.items() if k in names})
    if args.get("training"):
        return f"batch norm '{node.name}' uses batch statistics (train mode)"
    tensors = {k: constant(gm, args.get(k)) for k in ("weight", "bias", "running_mean", "running_var")}
    if tensors["running_mean"] is None or tensors["running_var"] is None:
        return f"batch norm '{node.name}' has no running statistics"
    norm = nn.BatchNorm2d(len(tensors["running_mean"]), eps=float(args.get("eps", 1e-5)), affine=False)
    norm.running_mean, norm.running_var = tensors["running_mean"], tensors["running_var"]
    if tensors["weight"] is not None:
        norm.weight = nn.Parameter(tensors["weight"], requires_grad=False)
    if tensors["bias"] is not None:
        norm.bias = nn.Parameter(tensors["bias"], requires_grad=False)
    return norm.eval()


def _per_channel_constant(gm: fx.GraphModule, node, channels: int) -> torch.Tensor | None:
    value = constant(gm, node)
    if value is None or value.numel() != channels:
        return None
    if value.dim() == 3 and value.shape == (channels, 1, 1) or value.dim() == 4 and value.shape == (1, channels, 1, 1):
        return value.reshape(channels, 1, 1)
    return None


def _describe(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    return getattr(node.target, "__name__", str(node.target))
