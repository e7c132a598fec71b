"""Seeded, deterministic training of small models on a data set's train split (SGD with
momentum and a cosine learning-rate schedule)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .data import Dataset
from .errors import InputError
from .evaluate import Score, evaluate


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 0:
            raise InputError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise InputError(f"learning rate must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise InputError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise InputError(f"weight decay must be >= 0, got {self.weight_decay}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EpochLog:
    epoch: int
    loss: float
    calib: Score


@dataclass
class TrainResult:
    epochs: list[EpochLog] = field(default_factory=list)
    seconds: float = 0.0


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig = TrainConfig(),
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``data.train``; score each epoch on ``data.calib``.

    Two runs with the same config, data and initial weights give identical weights.
    """
    if not data.labeled:
        raise InputError(f"data '{data.name}' has no labels: training needs labelled data")
    torch.manual_seed(config.seed)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    steps_per_epoch = -(-len(data.train) // config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, config.epochs * steps_per_epoch))
    order = torch.Generator().manual_seed(config.seed)
    loss_fn = nn.CrossEntropyLoss()
    result = TrainResult()
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        model.train()
        total, count = 0.0, 0
        for index in torch.randperm(len(data.train), generator=order).split(config.batch_size):
            x, y = data.train.x[index], data.train.y[index]
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
            count += len(index)
        log = EpochLog(epoch, total / count, evaluate(model, data.calib))
        result.epochs.append(log)
        if on_epoch is not None:
            on_epoch(log)
    model.eval()
    result.seconds = time.perf_counter() - start
    return result
