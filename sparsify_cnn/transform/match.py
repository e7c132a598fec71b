"""Find convs whose output reaches a ReLU: conv [+ bias] [-> batch norm] [+ residual] -> ReLU.

"ReLU" is any activation that maps every non-positive input to 0 and is >= 0, which is what
zero prediction needs: ReLU itself, and clamps to [0, t] or [0, inf) (ReLU6, hardtanh(0, t),
clamp(min=0[, max=t]), clamp_min(0)); the chain records t. Works on module-level (fx) and
aten-level (torch.export) graphs, with module, functional, method and in-place variants.
Every conv that does not match gets the reason why.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import fx, nn

from .eligibility import called_once, screen_convs, shape_recorded, two_d, unshared_weights, zero_padding
from .layers import Layer, constant, find_layers, layer_of, tensor_shape

_RELU_FUNCTIONS = {
    F.relu,
    torch.relu,
    torch.relu_,
    torch.ops.aten.relu.default,
    torch.ops.aten.relu_.default,
}
_aten = torch.ops.aten


class _Bounds(NamedTuple):
    """Where a clamp-like activation takes its bounds: the argument names of its lower and upper
    bound (positional in this order after the input; None: not an argument) and the bounds
    (None: unbounded) when the arguments are absent."""

    low: str | None
    high: str | None
    default: tuple[float | None, float | None]


_RELU = _Bounds(None, None, (0.0, None))
_RELU6 = _Bounds(None, None, (0.0, 6.0))
_HARDTANH = _Bounds("min_val", "max_val", (-1.0, 1.0))
_CLAMP = _Bounds("min", "max", (None, None))
_CLAMP_MIN = _Bounds("min", None, (None, None))
_CLAMP_MAX = _Bounds(None, "max", (None, None))
_CLAMP_FUNCTIONS = {
    **dict.fromkeys(_RELU_FUNCTIONS, _RELU),
    **dict.fromkeys((F.relu6, _aten.relu6.default, _aten.relu6_.default), _RELU6),
    **dict.fromkeys((F.hardtanh, F.hardtanh_, _aten.hardtanh.default, _aten.hardtanh_.default), _HARDTANH),
    # Matched only to be refused with the reason: the .Tensor overloads (tensor bounds) and
    # clamp_max (no lower bound).
    **dict.fromkeys((torch.clamp, torch.clamp_, torch.clip, torch.clip_, _aten.clamp.default, _aten.clamp_.default,
                     _aten.clip.default, _aten.clip_.default, _aten.clamp.Tensor, _aten.clamp_.Tensor,
                     _aten.clip.Tensor, _aten.clip_.Tensor), _CLAMP),
    **dict.fromkeys((torch.clamp_min, torch.clamp_min_, _aten.clamp_min.default, _aten.clamp_min_.default,
                     _aten.clamp_min.Tensor, _aten.clamp_min_.Tensor), _CLAMP_MIN),
    **dict.fromkeys((torch.clamp_max, torch.clamp_max_, _aten.clamp_max.default, _aten.clamp_max_.default,
                     _aten.clamp_max.Tensor, _aten.clamp_max_.Tensor), _CLAMP_MAX),
}  # fmt: skip
_CLAMP_METHODS = {
    **dict.fromkeys(("relu", "relu_"), _RELU),
    **dict.fromkeys(("clamp", "clamp_", "clip", "clip_"), _CLAMP),
    **dict.fromkeys(("clamp_min", "clamp_min_"), _CLAMP_MIN),
    **dict.fromkeys(("clamp_max", "clamp_max_"), _CLAMP_MAX),
}
SPATIAL_CHECKS = (two_d, called_once, unshared_weights, zero_padding("the Spatial op"), shape_recorded)
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add, torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor}
_BN_MODULES = (nn.BatchNorm2d,)
_MAX_POOL_FUNCTIONS = {F.max_pool2d, torch.max_pool2d, torch.ops.aten.max_pool2d.default}


@dataclass
class ConvReluChain:
    """A conv and the nodes between it and its ReLU (or ReLU-like clamp to [0, max_value])."""

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
    max_value: float | None = None  # the activation's upper bound (ReLU6: 6.0; None: plain ReLU)


@dataclass
class MatchResult:
    chains: list[ConvReluChain] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # layer name -> reason


def find_conv_relu(gm: fx.GraphModule) -> MatchResult:
    """Every 2-D conv of ``gm`` whose output flows (alone) into a ReLU, and why the rest don't."""
    result = MatchResult()
    taken, skipped = screen_convs(gm, SPATIAL_CHECKS)
    for layer in taken:
        chain_or_reason = _follow(gm, layer)
        if isinstance(chain_or_reason, ConvReluChain):
            result.chains.append(chain_or_reason)
        else:
            skipped[layer.name] = chain_or_reason
    result.skipped = {layer.name: skipped[layer.name] for layer in find_layers(gm) if layer.name in skipped}
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


def _follow(gm: fx.GraphModule, layer: Layer) -> ConvReluChain | str:
    chain = ConvReluChain(layer=layer, relu=layer.node, nodes=[layer.node])
    node = layer.node
    while True:
        users = list(node.users)
        if len(users) != 1:
            return "its output has several users before any ReLU" if users else "its output is unused"
        user = users[0]
        bounds = _activation_bounds(gm, user)
        if bounds is not None:
            refused = _not_relu_like(bounds, gm, user)
            if refused is not None:
                return refused
            high = bounds[1]
            chain.relu, chain.max_value = user, None if high is None or math.isinf(high) else float(high)
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


def _activation_bounds(gm: fx.GraphModule, node: fx.Node) -> tuple | None:
    """(lower, upper) bounds of a ReLU or clamp-like activation (None: unbounded), or None
    when ``node`` is no such activation. A bound may be an fx node (a tensor bound)."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, nn.ReLU):
            return (0.0, None)
        if isinstance(module, nn.Hardtanh):  # ReLU6 is a Hardtanh(0, 6)
            return (module.min_val, module.max_val)
        return None
    if node.op == "call_function":
        spec = _CLAMP_FUNCTIONS.get(node.target)
    elif node.op == "call_method":
        spec = _CLAMP_METHODS.get(node.target)
    else:
        spec = None
    if spec is None:
        return None
    names = [name for name in (spec.low, spec.high) if name is not None]
    given = dict(zip(names, node.args[1:]))
    given.update((k, v) for k, v in node.kwargs.items() if k in names)
    names_and_defaults = zip((spec.low, spec.high), spec.default)
    return tuple(given.get(name, default) if name else default for name, default in names_and_defaults)


def _not_relu_like(bounds: tuple, gm: fx.GraphModule, node: fx.Node) -> str | None:
    """Why clamping to ``bounds`` breaks zero prediction (it needs outputs >= 0 that are 0 for
    every input <= 0), or None when it does not."""
    low, high = bounds
    what = f"its activation '{node.name}' ({_describe(gm, node)})"
    if any(isinstance(b, fx.Node) for b in bounds):
        return f"{what} takes its bounds as tensors (only constant bounds are supported)"
    if low is None or float(low) != 0.0:
        return f"{what} has lower bound {'-inf' if low is None else low} (zero prediction needs exactly 0)"
    if high is not None and float(high) <= 0.0:
        return f"{what} has upper bound {high} (zero prediction needs one above 0)"
    return None


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


# The pooling layer after a conv, for perforation's pooling-structure masks (Figurnov et al.
# 2016): they score each output position by the number of that layer's windows covering it.

_POSITIONWISE_MODULES = (
    nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus,
    nn.Identity, nn.Dropout, nn.Dropout2d, nn.BatchNorm2d,
)  # fmt: skip
_POSITIONWISE_FUNCTIONS = _RELU_FUNCTIONS | _ADD_FUNCTIONS | set(_CLAMP_FUNCTIONS) | {
    operator.mul, operator.imul, operator.sub, operator.isub, torch.mul, torch.sub,
    F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish, F.hardtanh, F.hardswish,
    F.hardsigmoid, F.sigmoid, F.tanh, torch.sigmoid, torch.tanh, F.dropout, F.dropout2d,
    torch.dropout, F.batch_norm, torch.batch_norm,
    _aten.mul.Tensor, _aten.sub.Tensor, _aten.relu6.default, _aten.leaky_relu.default,
    _aten.elu.default, _aten.gelu.default, _aten.silu.default, _aten.hardtanh.default,
    _aten.hardswish.default, _aten.sigmoid.default, _aten.tanh.default, _aten.clamp.default,
    _aten.dropout.default, _aten.batch_norm.default, _aten.clone.default,
}  # fmt: skip
_POSITIONWISE_METHODS = set(_CLAMP_METHODS) | {
    "relu", "relu_", "sigmoid", "tanh", "clamp", "add", "add_", "mul", "mul_", "sub",
    "contiguous", "clone",
}  # fmt: skip
# Decomposed batch norm returns (output, statistics...): the map goes on through getitem 0.
_TUPLE_POSITIONWISE = {_aten._native_batch_norm_legit_no_training.default}
_MAX_POOL_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
_AVG_POOL_ARGS = ("kernel_size", "stride", "padding", "ceil_mode")
_POOL_ARGS = {  # a pooling function's positional arguments after its input
    **dict.fromkeys((F.max_pool2d, F.max_pool2d_with_indices, torch.max_pool2d, _aten.max_pool2d.default,
                     _aten.max_pool2d_with_indices.default), _MAX_POOL_ARGS),
    **dict.fromkeys((F.avg_pool2d, _aten.avg_pool2d.default), _AVG_POOL_ARGS),
    **dict.fromkeys((F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.adaptive_max_pool2d_with_indices,
                     _aten.adaptive_avg_pool2d.default, _aten._adaptive_avg_pool2d.default,
                     _aten.adaptive_max_pool2d.default), ("output_size",)),
}  # fmt: skip
_MEAN_FUNCTIONS = {torch.mean, _aten.mean.dim}


class PoolingWindows(NamedTuple):
    """The windows of a 2-D pooling layer, as (rows, columns) pairs; the first three fields
    unpack as ``kernel, stride, padding``."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)
    # Output sizes round up: one more window where the map runs out.
    ceil_mode: bool = False


def find_next_pooling(gm: fx.GraphModule, conv_node: fx.Node) -> PoolingWindows | None:
    """The windows of the pooling layer that ``conv_node``'s output reaches position by
    position, or None when there is none.

    On the way, only ops that keep positions apart: bias adds, batch norm, activations,
    dropout, residual adds and products of same-size maps, and 1x1 stride-1 convs (NIN's
    mlpconv layers, which the paper counts as part of the nonlinearity); and each value must
    have a single user, or the pool would not be all that reads the conv's output. Works on fx
    (pool modules, ``F.*pool2d``) and torch.export graphs (``aten.*pool2d``, with indices
    through ``getitem``). Adaptive pools and spatial means count when the map divides evenly
    (their windows are then a kernel of map / output); dilated max pools keep their dilation.
    Example::

        windows = find_next_pooling(gm, layer.node)  # cq's conv2: 3x3 stride 2, ceil mode
    """
    map_hw = _map_hw(conv_node)
    node = conv_node
    while True:
        users = [user for user in node.users if not _statistics_output(node, user)]
        if len(users) != 1:
            return None
        source, node = node, users[0]
        options = _pool_options(gm, node)
        if options is not None:
            return _pooling_windows(options, map_hw)
        if not _positionwise(gm, node, source):
            return None
        # The same map all along; a node a pass just inserted may have no shape yet.
        hw = _map_hw(node)
        if map_hw is not None and hw not in (None, map_hw):
            return None
        map_hw = map_hw or hw


def _positionwise(gm: fx.GraphModule, node: fx.Node, source: fx.Node) -> bool:
    """Whether ``node`` computes each output position of ``source``'s map from that position."""
    if node.op == "call_method":
        return node.target in _POSITIONWISE_METHODS
    if node.op == "call_module" and isinstance(
        gm.get_submodule(node.target), _POSITIONWISE_MODULES
    ):
        return True
    if node.op == "call_function":
        if node.target in _POSITIONWISE_FUNCTIONS or node.target in _TUPLE_POSITIONWISE:
            return True
        if node.target is operator.getitem:
            return (
                node.args[1] == 0
                and source.op == "call_function"
                and source.target in _TUPLE_POSITIONWISE
            )
    layer = layer_of(gm, node)  # a 1x1 stride-1 conv mixes channels, not positions
    return (
        layer is not None
        and layer.kind == "conv"
        and node.args[0] is source
        and layer.kernel_size == (1, 1)
        and layer.stride == (1, 1)
        and layer.padding in ((0, 0), "valid", "same")
    )


def _statistics_output(node: fx.Node, user: fx.Node) -> bool:
    return (
        node.op == "call_function"
        and node.target in _TUPLE_POSITIONWISE
        and user.target is operator.getitem
        and user.args[1] != 0
    )


def _pool_options(gm: fx.GraphModule, node: fx.Node) -> dict | None:
    """The pooling options of ``node`` by name, or None when it is no 2-D pooling."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            names = (
                _MAX_POOL_ARGS if isinstance(module, nn.MaxPool2d) else _AVG_POOL_ARGS
            )
            return {name: getattr(module, name) for name in names}
        if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            return {"output_size": module.output_size}
        return None
    if node.op == "call_function" and node.target in _POOL_ARGS:
        names = _POOL_ARGS[node.target]
        options = dict(zip(names, node.args[1:]))
        options.update((k, v) for k, v in node.kwargs.items() if k in names)
        return options
    mean = node.op == "call_function" and node.target in _MEAN_FUNCTIONS
    if mean or node.op == "call_method" and node.target == "mean":
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = [dims] if isinstance(dims, int) else dims
        if dims is not None and len(dims) == 2 and {d % 4 for d in dims} == {2, 3}:
            return {"output_size": (1, 1)}  # a global average pool
    return None


def pooling_windows(gm: fx.GraphModule, node: fx.Node) -> PoolingWindows | None:
    """The windows of the 2-D pooling ``node`` computes, or None when it is no such pooling."""
    options = _pool_options(gm, node)
    return _pooling_windows(options, _map_hw(node.args[0])) if options is not None else None


def _pooling_windows(
    options: dict, map_hw: tuple[int, int] | None
) -> PoolingWindows | None:
    if "output_size" in options:
        if map_hw is None:
            return None
        size = options["output_size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        size = tuple(m if s is None else int(s) for m, s in zip(map_hw, size))
        if any(m % s for m, s in zip(map_hw, size)):
            return None  # windows of unequal sizes: no kernel and stride describe them
        kernel = tuple(m // s for m, s in zip(map_hw, size))
        return PoolingWindows(kernel, kernel, (0, 0))
    kernel = _pair(options["kernel_size"])
    stride = options.get("stride")
    # No stride (None, or [] in aten graphs) means the kernel's.
    no_stride = stride is None or isinstance(stride, (list, tuple)) and not stride
    return PoolingWindows(
        kernel,
        kernel if no_stride else _pair(stride),
        _pair(options.get("padding", 0)),
        _pair(options.get("dilation", 1)),
        bool(options.get("ceil_mode", False)),
    )


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


def _map_hw(node: fx.Node) -> tuple[int, int] | None:
    shape = tensor_shape(node)
    return shape[-2:] if shape is not None and len(shape) >= 3 else None
