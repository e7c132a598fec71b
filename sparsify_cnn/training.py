"""Seeded, deterministic training of small models on a data set's train split: SGD with
momentum and a cosine learning-rate schedule, or the step schedule of the SSC seed's recipe
(``TrainConfig.seed_recipe``). With a checkpoint file, training resumes after an interruption
and ends with the same weights, bit for bit, as a run that was never interrupted."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .data import Dataset
from .errors import InputError
from .evaluate import Score, evaluate

SCHEDULES = ("cosine", "step")


@dataclass(frozen=True)
class TrainConfig:
    """SGD settings. ``schedule``: "cosine" (decay to 0 over the run, per step) or "step" (the
    learning rate times ``gamma`` at each epoch of ``milestones``)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
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
        if self.schedule not in SCHEDULES:
            raise InputError(f"schedule must be one of {', '.join(SCHEDULES)}, got '{self.schedule}'")
        if self.milestones and self.schedule != "step":
            raise InputError(f"milestones apply to the step schedule, not '{self.schedule}'")
        if any(m < 1 for m in self.milestones) or list(self.milestones) != sorted(set(self.milestones)):
            raise InputError(f"milestones must be increasing epochs >= 1, got {list(self.milestones)}")
        if not 0 < self.gamma <= 1:
            raise InputError(f"gamma must be in (0, 1], got {self.gamma}")

    @classmethod
    def seed_recipe(cls, epochs: int = 250, seed: int = 0) -> TrainConfig:
        """The SSC seed's CIFAR recipe: SGD, learning rate 0.1, weight decay 1e-4, batch 128,
        learning rate x0.1 at 40%, 60% and 80% of the epochs (100, 150, 200 of 250). The seed
        does not state the momentum; 0.9 is assumed."""
        milestones = sorted({max(1, round(epochs * f)) for f in (0.4, 0.6, 0.8)})
        return cls(epochs, 128, 0.1, 0.9, 1e-4, seed, "step", tuple(milestones), 0.1)

    def to_dict(self) -> dict:
        return {**asdict(self), "milestones": list(self.milestones)}


@dataclass(frozen=True)
class EpochLog:
    epoch: int
    loss: float
    calib: Score


@dataclass
class TrainResult:
    epochs: list[EpochLog] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int = 0  # the epoch a checkpoint had reached (0: started from scratch)


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig = TrainConfig(),
    on_epoch: Callable[[EpochLog], None] | None = None,
    checkpoint: str | Path | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``data.train``; score each epoch on ``data.calib``.

    Two runs with the same config, data and initial weights give identical weights. With
    ``checkpoint``, the model, optimizer, schedule and random states are written there after
    every epoch (atomically); a later call with the same model (same initial weights), data and
    config continues from it and finishes with the weights an uninterrupted run reaches::

        train(model, data, TrainConfig.seed_recipe(epochs=30), checkpoint="run.ckpt")
    """
    if not data.labeled:
        raise InputError(f"data '{data.name}' has no labels: training needs labelled data")
    torch.manual_seed(config.seed)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    steps_per_epoch = -(-len(data.train) // config.batch_size)
    schedule = _schedule(optimizer, config, steps_per_epoch)
    order = torch.Generator().manual_seed(config.seed)
    loss_fn = nn.CrossEntropyLoss()
    result = TrainResult()
    path = Path(checkpoint) if checkpoint is not None else None
    identity = _identity(model, data, config) if path is not None else None
    previous_seconds = 0.0
    if path is not None and path.exists():
        state = _load(path, identity)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        order.set_state(state["order"])
        torch.set_rng_state(state["rng"])
        result.epochs = [EpochLog(log["epoch"], log["loss"], Score(**log["calib"])) for log in state["logs"]]
        result.resumed_from = state["epoch"]
        previous_seconds = state["seconds"]
    start = time.perf_counter()
    for epoch in range(result.resumed_from + 1, config.epochs + 1):
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
        if path is not None:
            _save(path, {
                "identity": identity,
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "order": order.get_state(),
                "rng": torch.get_rng_state(),
                "logs": [{"epoch": e.epoch, "loss": e.loss, "calib": asdict(e.calib)} for e in result.epochs],
                "seconds": previous_seconds + time.perf_counter() - start,
            })  # fmt: skip
        if on_epoch is not None:
            on_epoch(log)
    model.eval()
    result.seconds = previous_seconds + time.perf_counter() - start
    return result


def _schedule(optimizer, config: TrainConfig, steps_per_epoch: int):
    """Stepped once per batch, so both kinds checkpoint and resume the same way."""
    if config.schedule == "step":
        steps = [m * steps_per_epoch for m in config.milestones]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, steps, gamma=config.gamma)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, config.epochs * steps_per_epoch))


def _identity(model: nn.Module, data: Dataset, config: TrainConfig) -> dict:
    """What a checkpoint must have been written by: this config, this data, these initial weights."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return {"config": config.to_dict(), "data": data.fingerprint(), "initial_weights": digest.hexdigest()[:16]}


def _load(path: Path, identity: dict) -> dict:
    try:
        state = torch.load(path, weights_only=True)
        written_by = state["identity"]
    except Exception as error:  # any unreadable file gets the same advice
        raise InputError(
            f"training checkpoint '{path}' is unreadable ({type(error).__name__}); remove it to start over"
        ) from error
    if written_by != identity:
        differs = ", ".join(key.replace("_", " ") for key in identity if written_by.get(key) != identity[key])
        raise InputError(
            f"training checkpoint '{path}' was written by another run (other {differs}); remove it to start over"
        )
    return state


def _save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, path)  # a kill mid-write leaves the previous checkpoint whole
