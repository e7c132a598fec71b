"""Training-time rewrites (seeds 000/001): STAN convs, convolutional dropout, meProp linears and
a dropout before a classifier; and the rewrite back to the plain layers once training is done,
so a model trained with any of them saves, loads and compiles like any other."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import fx, nn

from ...config import Config
from ...errors import InputError
from ...transform.eligibility import called_once, screen_convs, shape_recorded, two_d, unshared_weights, zero_padding
from ...transform.layers import Layer, find_layers, tensor_shape
from ...transform.rewrite import (
    PassResult,
    conv_module,
    copy_graph_module,
    finish_rewrite,
    free_name,
    replace_layer,
    select_layers,
)
from .baselines import MePropLinear
from .conv import KERNELS, StanContext, StanConv
from .entry import VARIANTS
from .schedule import check_schedule


@dataclass(frozen=True)
class StanConfig(Config):
    """STAN on the selected convs.

    variant: "stan" (replay the stored value, fp16 per entry) or "stan-lite" (0, 1 bit per entry).
    theta: absolute threshold: an output <= theta is covered. coverage: instead, a target
        coverage per layer (theta is that quantile of each batch's outputs). Give one.
    pre_epochs: p_t, dense epochs before the first entry matrix. period: Z, skipping epochs
        after each entry-matrix epoch.
    kernel: the skipping forward ("auto", "compiled", "positions", "channels", "dense"; see
        ``techniques/stan/conv.py``).
    layers: glob patterns of conv names (none: every 2-D conv).
    """

    variant: str = "stan"
    theta: float | None = 0.0
    coverage: float | None = None
    pre_epochs: int = 0
    period: int = 1
    kernel: str = "auto"
    layers: tuple[str, ...] = ()
    version: int = 1

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise InputError(f"unknown STAN variant '{self.variant}'; choose one of: {', '.join(VARIANTS)}")
        if (self.theta is None) == (self.coverage is None):
            raise InputError("STAN needs exactly one of theta (an absolute threshold) and coverage (a quantile)")
        if self.coverage is not None and not 0 < self.coverage < 1:
            raise InputError(f"STAN coverage must be in (0, 1), got {self.coverage}")
        if self.kernel not in KERNELS:
            raise InputError(f"unknown STAN kernel '{self.kernel}'; choose one of: {', '.join(KERNELS)}")
        check_schedule(self.pre_epochs, self.period)
        object.__setattr__(self, "layers", tuple(self.layers))


def stan_layers(
    gm: fx.GraphModule, patterns: Iterable[str] = (), filter_fn: Callable[[Layer], bool] | None = None
) -> tuple[dict[str, tuple[int, int, int]], dict[str, str]]:
    """The convs STAN would cover, with their output shape per sample (T, H', W'), and the convs
    it leaves alone, with the reason."""
    taken, skipped = screen_convs(gm, STAN_CHECKS, select_layers(patterns, filter_fn))
    return {layer.name: tuple(tensor_shape(layer.node)[1:]) for layer in taken}, skipped


def insert_stan_convs(
    gm: fx.GraphModule,
    context: StanContext,
    patterns: Iterable[str] = (),
    filter_fn: Callable[[Layer], bool] | None = None,
    inplace: bool = False,
) -> PassResult:
    """Replace the convs of ``context.store`` (chosen with ``stan_layers``) by ``StanConv``.

    Example::

        shapes, _ = stan_layers(gm)
        context = StanContext(EntryStore(shapes, len(data.train), "stan"), theta=0.0)
        result = insert_stan_convs(gm, context)   # result.inserted: {'conv1': 'stan_conv1', ...}
    """
    if not inplace:
        gm = copy_graph_module(gm)
    shapes, skipped = stan_layers(gm, patterns, filter_fn)
    if set(shapes) != set(context.store.shapes):
        raise InputError(
            f"the entry matrix holds layers {sorted(context.store.shapes)}; the graph has {sorted(shapes)}"
        )
    result = PassResult(gm, skipped=skipped)
    for layer in find_layers(gm):
        if layer.name in shapes:
            op = StanConv(conv_module(gm, layer), layer.name, context)
            result.inserted[layer.name] = replace_layer(gm, layer, op, "stan_")
    return _finish(result)


def insert_conv_dropout(
    gm: fx.GraphModule,
    p: float,
    patterns: Iterable[str] = (),
    filter_fn: Callable[[Layer], bool] | None = None,
    inplace: bool = False,
) -> PassResult:
    """Dropout with rate ``p`` on the output of every selected conv (the seed's "random" baseline)."""
    _check_rate(p, "conv dropout")
    if not inplace:
        gm = copy_graph_module(gm)
    selected = select_layers(patterns, filter_fn)
    result = PassResult(gm)
    for layer in find_layers(gm):
        if layer.kind != "conv":
            continue
        if not selected(layer):
            result.skipped[layer.name] = "not selected"
            continue
        result.inserted[layer.name] = _dropout_after(gm, layer.node, p, layer.name)
    return _finish(result)


def insert_dropout_before(gm: fx.GraphModule, layer_name: str, p: float, inplace: bool = False) -> PassResult:
    """Dropout with rate ``p`` on the input of layer ``layer_name`` (a classifier's dropout)."""
    _check_rate(p, "dropout")
    if not inplace:
        gm = copy_graph_module(gm)
    layers = {layer.name: layer for layer in find_layers(gm)}
    if layer_name not in layers:
        raise InputError(f"no layer '{layer_name}' to put a dropout before; the layers are {', '.join(layers)}")
    node = layers[layer_name].node
    result = PassResult(gm)
    result.inserted[layer_name] = _dropout_after(gm, node.args[0], p, layer_name, before=node)
    return _finish(result)


def insert_meprop(gm: fx.GraphModule, k: int, patterns: Iterable[str] = (), inplace: bool = False) -> PassResult:
    """meProp with top-``k`` on the selected linear layers; without patterns, every linear layer
    but the last (the classifier keeps its full gradient, as in the authors' code)."""
    if k < 0:
        raise InputError(f"meProp k must be >= 0 (0: no selection), got {k}")
    if not inplace:
        gm = copy_graph_module(gm)
    linears = [layer for layer in find_layers(gm) if layer.kind == "linear"]
    selected = select_layers(patterns)
    calls = _module_calls(gm)
    result = PassResult(gm)
    for i, layer in enumerate(linears):
        if patterns and not selected(layer):
            result.skipped[layer.name] = "not selected"
        elif not patterns and i == len(linears) - 1:
            result.skipped[layer.name] = "the output layer keeps its full gradient"
        elif layer.node.op == "call_module" and calls.get(layer.node.target, 0) > 1:
            result.skipped[layer.name] = "its module is called more than once"
        else:
            result.inserted[layer.name] = replace_layer(gm, layer, MePropLinear(_linear_module(gm, layer), k, layer.name),
                                                   "meprop_")  # fmt: skip
    return _finish(result)


class InsertedDropout(nn.Dropout):
    """A dropout this module inserted (``strip_training_ops`` removes only these)."""


def strip_training_ops(gm: fx.GraphModule, inplace: bool = False) -> PassResult:
    """Undo the rewrites above: plain convs and linears back under their layer names, inserted
    dropouts removed. The result computes what the trained model computes in eval mode."""
    if not inplace:
        gm = copy_graph_module(gm)
    result = PassResult(gm)
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        if isinstance(module, InsertedDropout):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            result.inserted[str(node.target)] = "removed"
        elif isinstance(module, (StanConv, MePropLinear)):
            inner = module.conv if isinstance(module, StanConv) else module.linear
            name = module.layer_name if not _has_path(gm, module.layer_name) else free_name(gm, module.layer_name)
            gm.add_submodule(name, inner)
            result.inserted[module.layer_name] = name
            node.target = name
    return _finish(result)


def _finish(result: PassResult) -> PassResult:
    if result.inserted:
        finish_rewrite(result.graph_module)
    return result


def _check_rate(p: float, what: str) -> None:
    if not 0 <= p < 1:
        raise InputError(f"{what} rate must be in [0, 1), got {p}")


def _module_calls(gm: fx.GraphModule) -> dict[str, int]:
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    return calls


def _ungrouped(layer: Layer, facts) -> str | None:
    if layer.groups != 1:
        return f"grouped conv (groups={layer.groups}); the sparse-output kernel takes groups=1"
    return None


STAN_CHECKS = (two_d, _ungrouped, called_once, unshared_weights, zero_padding("STAN's conv"), shape_recorded)


def _has_path(gm: fx.GraphModule, path: str) -> bool:
    try:
        gm.get_submodule(path)
        return True
    except AttributeError:
        return False


def _linear_module(gm: fx.GraphModule, layer: Layer) -> nn.Linear:
    if layer.node.op == "call_module":
        return gm.get_submodule(layer.node.target)
    linear = nn.Linear(layer.weight.shape[1], layer.weight.shape[0], bias=layer.bias is not None)
    linear.weight = nn.Parameter(layer.weight.detach(), requires_grad=True)
    if layer.bias is not None:
        linear.bias = nn.Parameter(layer.bias.detach(), requires_grad=True)
    return linear


def _dropout_after(gm: fx.GraphModule, node: fx.Node, p: float, layer_name: str, before: fx.Node | None = None) -> str:
    name = free_name(gm, "dropout_" + layer_name.replace(".", "_"))
    gm.add_submodule(name, InsertedDropout(p))
    graph = gm.graph
    if before is None:
        with graph.inserting_after(node):
            drop = graph.call_module(name, (node,))
        node.replace_all_uses_with(drop, delete_user_cb=lambda user: user is not drop)
    else:
        with graph.inserting_before(before):
            drop = graph.call_module(name, (node,))
        before.replace_input_with(node, drop)
    drop.meta = dict(node.meta)
    return name
