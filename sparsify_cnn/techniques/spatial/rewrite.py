"""Insert Spatial ops (cross-neuron zero prediction) on every selected conv that feeds a ReLU.

The conv, its bias / batch norm / residual add and the ReLU (or a ReLU-like clamp to [0, t],
such as ReLU6, whose bound the op keeps) become one ``SpatialConv`` call (a max pool between
conv and ReLU stays, after the op: the two commute) with an all-ones mask, so the rewritten
model equals the original exactly until a search installs masks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from torch import fx

from ...config import Config
from ...errors import InputError
from ...transform.layers import Layer, tensor_shape
from ...transform.match import ConvReluChain, find_conv_relu
from ...transform.rewrite import (
    PassResult,
    conv_module,
    copy_graph_module,
    finish_rewrite,
    free_name,
    inserted_ops,
    no_layer_message,
    select_layers,
    skip_kind,
)
from .op import EDGES, SpatialConv

PATCH_SIZES = (2, 3, 4)


@dataclass(frozen=True)
class SpatialConfig(Config):
    """Where and how to predict zeros.

    patch_size: p of the p x p patches (2, 3 or 4).
    edge: "pad" pads maps with zeros to a multiple of p (the paper); "compute" computes edge
        patches that stick out of the map in full.
    channel_group: predict a patch zero only when g consecutive channels agree (1 = the paper).
    layers: glob patterns of layer names to transform (none: every conv that feeds a ReLU).
    """

    patch_size: int = 2
    edge: str = "pad"
    channel_group: int = 1
    layers: tuple[str, ...] = ()
    version: int = 1

    def __post_init__(self):
        if self.patch_size not in PATCH_SIZES:
            raise InputError(f"patch size must be one of {PATCH_SIZES}, got {self.patch_size}")
        if self.edge not in EDGES:
            raise InputError(f"edge must be one of {', '.join(EDGES)}, got '{self.edge}'")
        if self.channel_group < 1:
            raise InputError(f"channel group must be >= 1, got {self.channel_group}")
        object.__setattr__(self, "layers", tuple(self.layers))


def insert_spatial_ops(
    gm: fx.GraphModule,
    config: SpatialConfig = SpatialConfig(),
    filter_fn: Callable[[Layer], bool] | None = None,
    inplace: bool = False,
) -> PassResult:
    """Replace conv [+ bias] [-> BN] [+ residual] -> ReLU chains by ``SpatialConv`` ops.

    Example::

        result = insert_spatial_ops(capture(build("lenet"), (1, 1, 28, 28)).graph_module)
        result.inserted  # {'conv1': 'spatial_conv1', 'conv2': 'spatial_conv2'}
    """
    if not inplace:
        gm = copy_graph_module(gm)
    selected = select_layers(config.layers, filter_fn)
    match = find_conv_relu(gm)
    result = PassResult(gm, skipped=dict(match.skipped))
    for chain in match.chains:
        layer = chain.layer
        if not selected(layer):
            result.skipped[layer.name] = "not selected"
            continue
        if layer.out_channels % config.channel_group:
            result.skipped[layer.name] = (
                f"channel group {config.channel_group} does not divide its {layer.out_channels} channels"
            )
            continue
        result.inserted[layer.name] = _rewrite(gm, chain, config)
    if result.inserted:
        finish_rewrite(gm)
    return result


def nothing_inserted(skipped: dict[str, str]) -> str:
    """Why no conv took a Spatial op, in one short line with what to try. Example::

        nothing_inserted({"c1": "its output reaches 'h' (Hardswish) before any ReLU"})
        # "no layer of the model can take a Spatial op (1 conv checked: 1x its output reaches
        #  Hardswish before any ReLU); it needs a conv feeding ReLU, ReLU6 or ..."
    """
    hint = _NO_RELU_HINT
    if skipped:
        top = Counter(skip_kind(why) for why in skipped.values()).most_common(1)[0][0]
        hint = next((hint for word, hint in _HINTS.items() if word in top), _NO_RELU_HINT)
    return no_layer_message("take a Spatial op", skipped, hint, empty="it has no 2-D convs")


_HINTS = {"not selected": "check --layers", "channel group": "try a smaller --channel-group"}  # by the top reason
_NO_RELU_HINT = "it needs a conv feeding ReLU, ReLU6 or clamp(min=0): try --technique perforation"


def spatial_ops(gm: fx.GraphModule) -> dict[str, SpatialConv]:
    """The Spatial ops of a rewritten graph module, by layer name, in graph order."""
    return inserted_ops(gm, SpatialConv)


def _rewrite(gm: fx.GraphModule, chain: ConvReluChain, config: SpatialConfig) -> str:
    layer = chain.layer
    out_shape = tensor_shape(layer.node)
    op = SpatialConv(
        conv=conv_module(gm, layer),
        out_hw=out_shape[-2:],
        patch_size=config.patch_size,
        norm=chain.norm,
        bias=chain.bias,
        edge=config.edge,
        channel_group=config.channel_group,
        layer_name=layer.name,
        max_value=chain.max_value,
    )
    name = free_name(gm, "spatial_" + layer.name.replace(".", "_"))
    gm.add_submodule(name, op)
    graph = gm.graph
    args = (layer.node.args[0],) if chain.residual is None else (layer.node.args[0], chain.residual)
    with graph.inserting_before(chain.pool or chain.relu):
        node = graph.call_module(name, args)
    if chain.pool is None:
        node.meta = dict(chain.relu.meta)
        chain.relu.replace_all_uses_with(node)
    else:  # conv -> op -> pool: the pool now reads the op and replaces the ReLU
        node.meta = dict(layer.node.meta)
        chain.pool.replace_input_with(chain.pool.args[0], node)
        chain.relu.replace_all_uses_with(chain.pool)
    inputs = {arg for n in chain.nodes for arg in n.all_input_nodes}
    for old in reversed(chain.nodes):
        if old is not chain.pool:
            graph.erase_node(old)
    for orphan in inputs:  # weights and norm statistics read only by the erased nodes
        if orphan.op == "get_attr" and not orphan.users:
            graph.erase_node(orphan)
    return name


def apply_plan(gm: fx.GraphModule, plan) -> PassResult:
    """Rewrite ``gm`` as ``plan`` says and install its masks (the plan's layers only)."""
    from ...plan import install_masks, plan_config

    result = insert_spatial_ops(gm, plan_config(SpatialConfig, {**plan.config, "layers": list(plan.masks)}))
    return install_masks(result, spatial_ops(result.graph_module), plan.masks, "set_mask")
