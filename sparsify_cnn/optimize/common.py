"""What every technique's main job shares: the metric it scores with (and whether the dense
model can give it meaning) and how the rewritten model is saved."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import fx

from ..errors import DataError, InputError
from ..model_io import save_program
from ..ops.spatial import SpatialConv

METRIC_CHOICES = ("auto", "top1", "agreement")
ONE_CLASS_SHARE = 0.95  # a dense model giving one class to this share of images is untrained or broken


def resolve_metric(metric: str, labeled: bool) -> str:
    """``auto`` becomes top1 for labelled data and agreement (with the dense model) otherwise."""
    if metric not in METRIC_CHOICES:
        raise InputError(f"unknown metric '{metric}'; choose one of: {', '.join(METRIC_CHOICES)}")
    if metric == "auto":
        return "top1" if labeled else "agreement"
    if metric == "top1" and not labeled:
        raise DataError("metric top1 needs labels; this data has none (use agreement)")
    return metric


def one_class_warning(predictions: torch.Tensor, metric: str) -> str | None:
    """A warning when the dense model's top-1 ``predictions`` on the calibration images give one
    class to at least 95% of them: agreement with such a model is met by predicting that class,
    and top-1 accuracy is that class's share. Example::

        one_class_warning(torch.tensor([3, 3, 3]), "agreement")  # 'the dense model predicts class 3 for all ...'
    """
    counts = torch.bincount(predictions.flatten())
    top, images = int(counts.argmax()), predictions.numel()
    share = int(counts[top]) / images
    if share < ONE_CLASS_SHARE:
        return None
    how_many = "all" if share == 1 else f"{100 * share:.1f}% of the"
    meaning = ("agreement with it is meaningless (any model that predicts that class agrees)" if metric == "agreement"
               else "its top-1 accuracy is only that class's share of the labels")  # fmt: skip
    return (f"the dense model predicts class {top} for {how_many} {images} calibration images (untrained or "
            f"constant?): {meaning}; check the model and its input scaling before trusting this plan")


def save_rewritten(gm: fx.GraphModule, input_shape: tuple[int, ...], path: str | Path) -> None:
    """The rewritten model as a torch.export program (it runs the reference semantics)."""
    for module in gm.modules():
        if isinstance(module, SpatialConv):
            module.track_stats = False
    save_program(gm, tuple(input_shape[1:]), path, {"plan": "plan.json"})
