"""What every technique's main job shares: the metric it scores with and how the rewritten
model is saved."""

from __future__ import annotations

from pathlib import Path

from torch import fx

from ..errors import DataError, InputError
from ..model_io import save_program
from ..ops.spatial import SpatialConv

METRIC_CHOICES = ("auto", "top1", "agreement")


def resolve_metric(metric: str, labeled: bool) -> str:
    """``auto`` becomes top1 for labelled data and agreement (with the dense model) otherwise."""
    if metric not in METRIC_CHOICES:
        raise InputError(f"unknown metric '{metric}'; choose one of: {', '.join(METRIC_CHOICES)}")
    if metric == "auto":
        return "top1" if labeled else "agreement"
    if metric == "top1" and not labeled:
        raise DataError("metric top1 needs labels; this data has none (use agreement)")
    return metric


def save_rewritten(gm: fx.GraphModule, input_shape: tuple[int, ...], path: str | Path) -> None:
    """The rewritten model as a torch.export program (it runs the reference semantics)."""
    for module in gm.modules():
        if isinstance(module, SpatialConv):
            module.track_stats = False
    save_program(gm, tuple(input_shape[1:]), path, {"plan": "plan.json"})
