"""Accuracy of a model on a split: top-1 against labels, or, for label-free data, agreement
with a reference (dense) model's top-1 predictions. Every score says which metric it is.

A model whose outputs are not all finite has no score: NaN argmaxes to class 0 and would pass
for a prediction, so ``predict`` raises ``NonFiniteError`` naming the model instead."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .data import Split
from .errors import DataError, check_finite
from .transform.capture import set_eval

METRICS = {"top1": "top-1 accuracy", "agreement": "top-1 agreement with the dense model"}


@dataclass(frozen=True)
class Score:
    metric: str  # a key of METRICS
    value: float
    count: int

    def __str__(self) -> str:
        return f"{METRICS[self.metric]} {100 * self.value:.2f}% ({self.count} images)"


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The model's outputs for every image of ``x``, in eval mode."""
    set_eval(model)
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256, name: str = "the model") -> torch.Tensor:
    """Top-1 class of every image of ``x``; ``NonFiniteError`` naming ``name`` when an output
    is NaN or infinite."""
    out = logits(model, x, batch_size)
    check_finite(out, f"the outputs of {name} ({len(x)} images)")
    return out.argmax(dim=1)


def evaluate(
    model: nn.Module,
    split: Split,
    reference: nn.Module | None = None,
    metric: str | None = None,
    name: str = "the model",
) -> Score:
    """Score ``model`` on ``split``: ``top1`` when it has labels, else ``agreement`` with
    ``reference``. ``metric`` forces one (agreement needs ``reference``). ``name`` says which
    model an error is about: ``evaluate(gm, data.calib, name="the dense model on calib")``."""
    metric = metric or ("top1" if split.y is not None else "agreement")
    if metric not in METRICS:
        raise DataError(f"unknown metric '{metric}'; choose one of: {', '.join(METRICS)}")
    if metric == "top1":
        if split.y is None:
            raise DataError("top-1 accuracy needs labels; this data has none (use metric 'agreement')")
        target = split.y
    else:
        if reference is None:
            raise DataError("agreement needs a reference model to agree with")
        target = predict(reference, split.x, name="the reference (dense) model")
    hits = (predict(model, split.x, name=name) == target).sum().item()
    return Score(metric, hits / len(split), len(split))
