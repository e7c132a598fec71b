"""Replace selected non-1x1 convs by perforated convs (``PerforatedConv``), every position kept,
so the rewritten model equals the original exactly until rates are chosen."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from torch import fx

from ..errors import InputError
from ..ops.perforation import INTERPOLATIONS, PerforatedConv
from ..transform.layers import Layer, find_layers, tensor_shape
from .base import PassResult, conv_module, copy_graph_module, finish_rewrite, inserted_ops, replace_layer, select_layers


@dataclass(frozen=True)
class PerforationConfig:
    """Where and how to perforate.

    interpolation: how skipped positions are filled: "nearest" (the paper), "zero" or
        "barycentric".
    layers: glob patterns of layer names to transform (none: every non-1x1 2-D conv).
    seed: breaks ties between equally near kept positions (nearest interpolation).
    """

    interpolation: str = "nearest"
    layers: tuple[str, ...] = ()
    seed: int = 0
    version: int = 1

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise InputError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got '{self.interpolation}'")
        object.__setattr__(self, "layers", tuple(self.layers))

    def to_dict(self) -> dict:
        return {**asdict(self), "layers": list(self.layers)}

    @classmethod
    def from_dict(cls, data: dict) -> PerforationConfig:
        return cls(**{**data, "layers": tuple(data.get("layers", ()))})


def insert_perforated_convs(
    gm: fx.GraphModule,
    config: PerforationConfig = PerforationConfig(),
    filter_fn: Callable[[Layer], bool] | None = None,
    inplace: bool = False,
) -> PassResult:
    """Replace every selected non-1x1 conv by a ``PerforatedConv`` keeping every position.

    Example::

        result = insert_perforated_convs(capture(build("lenet"), (1, 1, 28, 28)).graph_module)
        result.inserted  # {'conv1': 'perforated_conv1', 'conv2': 'perforated_conv2'}
    """
    if not inplace:
        gm = copy_graph_module(gm)
    selected = select_layers(config.layers, filter_fn)
    module_calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module_calls[node.target] = module_calls.get(node.target, 0) + 1
    result = PassResult(gm)
    for layer in find_layers(gm):
        if layer.kind != "conv":
            continue
        reason = _unsupported(layer, module_calls)
        if reason is None and not selected(layer):
            reason = "not selected"
        if reason is not None:
            result.skipped[layer.name] = reason
            continue
        result.inserted[layer.name] = _rewrite(gm, layer, config)
    if result.inserted:
        finish_rewrite(gm)
    return result


def perforated_ops(gm: fx.GraphModule) -> dict[str, PerforatedConv]:
    """The perforated convs of a rewritten graph module, by layer name, in graph order."""
    return inserted_ops(gm, PerforatedConv)


def _unsupported(layer: Layer, module_calls: dict[str, int]) -> str | None:
    if layer.weight.dim() != 4:
        return f"{layer.weight.dim() - 2}-D conv (only 2-D convs are perforated)"
    if layer.kernel_size == (1, 1):
        return "1x1 conv (the paper perforates only larger kernels: a 1x1 conv is part of the nonlinearity)"
    if layer.node.op == "call_module" and module_calls.get(layer.node.target, 0) > 1:
        return "its module is called more than once"
    if layer.padding_mode != "zeros":
        return f"padding mode '{layer.padding_mode}' (the perforated conv pads with zeros)"
    weight = layer.node.args[1] if layer.node.op == "call_function" else None
    if isinstance(weight, fx.Node) and len(weight.users) > 1:  # a shared module, as torch.export leaves it
        return "its weights are shared with another conv"
    shape = tensor_shape(layer.node)
    if shape is None:
        return "no shape recorded (capture propagates shapes)"
    if shape[-2] * shape[-1] < 2:
        return "its output map has a single position"
    return None


def _rewrite(gm: fx.GraphModule, layer: Layer, config: PerforationConfig) -> str:
    op = PerforatedConv(
        conv=conv_module(gm, layer),
        out_hw=tensor_shape(layer.node)[-2:],
        interpolation=config.interpolation,
        layer_name=layer.name,
        seed=config.seed,
    )
    return replace_layer(gm, layer, op, "perforated_")
