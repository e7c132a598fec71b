"""Replace selected non-1x1 convs by perforated convs (``PerforatedConv``), every position kept,
so the rewritten model equals the original exactly until rates are chosen."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import fx

from ...config import Config
from ...errors import InputError
from ...transform.eligibility import called_once, screen_convs, shape_recorded, two_d, unshared_weights, zero_padding
from ...transform.layers import Layer, tensor_shape
from ...transform.rewrite import (
    PassResult,
    conv_module,
    copy_graph_module,
    finish_rewrite,
    inserted_ops,
    replace_layer,
    select_layers,
)
from .op import INTERPOLATIONS, PerforatedConv


@dataclass(frozen=True)
class PerforationConfig(Config):
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
    taken, skipped = screen_convs(gm, PERFORATION_CHECKS, select_layers(config.layers, filter_fn))
    result = PassResult(gm, skipped=skipped)
    for layer in taken:
        result.inserted[layer.name] = _rewrite(gm, layer, config)
    if result.inserted:
        finish_rewrite(gm)
    return result


def perforated_ops(gm: fx.GraphModule) -> dict[str, PerforatedConv]:
    """The perforated convs of a rewritten graph module, by layer name, in graph order."""
    return inserted_ops(gm, PerforatedConv)


def _not_1x1(layer: Layer, facts) -> str | None:
    if layer.kernel_size == (1, 1):
        return "1x1 conv (the paper perforates only larger kernels: a 1x1 conv is part of the nonlinearity)"
    return None


def _several_positions(layer: Layer, facts) -> str | None:
    shape = tensor_shape(layer.node)
    if shape[-2] * shape[-1] < 2:
        return "its output map has a single position"
    return None


PERFORATION_CHECKS = (two_d, _not_1x1, called_once, unshared_weights, zero_padding("the perforated conv"),
                      shape_recorded, _several_positions)  # fmt: skip


def _rewrite(gm: fx.GraphModule, layer: Layer, config: PerforationConfig) -> str:
    op = PerforatedConv(
        conv=conv_module(gm, layer),
        out_hw=tensor_shape(layer.node)[-2:],
        interpolation=config.interpolation,
        layer_name=layer.name,
        seed=config.seed,
    )
    return replace_layer(gm, layer, op, "perforated_")


def apply_plan(gm: fx.GraphModule, plan) -> PassResult:
    """Rewrite ``gm`` as ``plan`` says and install its masks (the plan's layers only)."""
    from ...plan import install_masks, plan_config

    result = insert_perforated_convs(gm, plan_config(PerforationConfig, {**plan.config, "layers": list(plan.masks)}))
    return install_masks(result, perforated_ops(result.graph_module), plan.masks, "set_kept")
