"""Seeded, deterministic training of small models on a data set's train split: SGD with
momentum and a cosine learning-rate schedule, or the step schedule of the SSC seed's recipe
(``TrainConfig.seed_recipe``; ``finetune_recipe`` for a trained model). With a checkpoint file,
training resumes after an interruption and ends with the same weights, bit for bit, as a run
that was never interrupted.

A NaN or infinite loss, weight or calibration output stops training with ``TrainingDiverged``;
the model keeps the weights of the last epoch that ended finite, and no checkpoint ever holds
non-finite weights."""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from .config import Config
from .data import Dataset
from .errors import InputError, NonFiniteError, OutputError, TrainingDiverged, check_finite
from .evaluate import Score, evaluate
from .progress import Progress, silent
from .storage import write_buffered

SCHEDULES = ("cosine", "step")
# Fine-tuning starts from trained weights, near a minimum: the seed's from-scratch 0.1 knocks
# them away (SSC on a trained batch-norm net diverged to NaN at 0.1); a tenth of it instead.
FINETUNE_LR = 0.01


@dataclass(frozen=True)
class TrainConfig(Config):
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

    @classmethod
    def finetune_recipe(cls, epochs: int, seed: int = 0, lr: float = FINETUNE_LR) -> TrainConfig:
        """The seed recipe (batch, weight decay, step schedule) at a fine-tuning learning rate,
        for a model that starts from trained weights: ``TrainConfig.finetune_recipe(5).lr == 0.01``."""
        return replace(cls.seed_recipe(epochs, seed), lr=lr)


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


class Trainer:
    """The training loop every trainer shares: seeded batch order, steps checked for NaN and
    infinity, a calibration score per epoch, a checkpoint after every epoch that a later run
    resumes from (bit for bit), and the last finite weights put back when training diverges.

    A trainer that does more per epoch or per batch (STAN's) extends it through the hooks:
    ``set_mode``, ``start_epoch``, ``start_step``, ``end_epoch`` (before the calibration score),
    ``make_record``, ``extra_state`` / ``restore_extra`` (what its checkpoint adds), and
    ``result`` (what a finished or diverged run returns)."""

    records_key = "logs"  # where a checkpoint keeps the per-epoch records

    def __init__(self, model: nn.Module, data: Dataset, epochs: int, batch_size: int, seed: int, optimizer,
                 schedule, checkpoint: str | Path | None = None, identity: dict | None = None,
                 progress: Progress | None = None, clock: Callable[[], float] = time.perf_counter,
                 on_epoch: Callable | None = None):  # fmt: skip
        self.model, self.data, self.epochs, self.batch_size = model, data, epochs, batch_size
        self.optimizer, self.schedule, self.identity = optimizer, schedule, identity
        self.path = Path(checkpoint) if checkpoint is not None else None
        self.order = torch.Generator().manual_seed(seed)
        self.progress, self.clock, self.on_epoch = progress or silent, clock, on_epoch
        self.records: list = []
        self.resumed_from = 0  # the epoch a checkpoint had reached (0: started from scratch)
        self.seconds = 0.0  # of training, checkpointed with the run
        self.loss_fn = nn.CrossEntropyLoss()

    # --- hooks -------------------------------------------------------------------------------
    def set_mode(self, training: bool) -> None:
        self.model.train(training)

    def start_epoch(self, epoch: int) -> None:
        """Before the epoch's first batch (epochs count from 1)."""

    def start_step(self, ids: torch.Tensor) -> None:
        """Before each batch, with the ids of its samples."""

    def end_epoch(self, epoch: int) -> dict:
        """After the epoch's last step, in eval mode, before it is scored: what the record adds."""
        return {}

    def make_record(self, epoch: int, loss: float, calib: Score, seconds: float, extra: dict):
        return EpochLog(epoch, loss, calib)

    def record_to_dict(self, record) -> dict:
        return {"epoch": record.epoch, "loss": record.loss, "calib": asdict(record.calib)}

    def record_from_dict(self, data: dict):
        return EpochLog(data["epoch"], data["loss"], Score(**data["calib"]))

    def extra_state(self) -> dict:
        """What the checkpoint holds besides weights, optimizer, schedule and random states."""
        return {}

    def restore_extra(self, state: dict) -> None:
        pass

    def epoch_seconds(self, train_seconds: float, wall_seconds: float) -> float:
        """What an epoch adds to ``seconds``: its training steps, or (here) its whole wall time."""
        return wall_seconds

    def result(self):
        return TrainResult(self.records, self.seconds, self.resumed_from)

    # --- the loop ----------------------------------------------------------------------------
    def resume(self) -> None:
        """Continue from the checkpoint if there is one this run wrote."""
        if self.path is None or not self.path.exists():
            return
        state = load_checkpoint(self.path, self.identity, "training checkpoint")
        with checkpoint_contents(self.path, "training checkpoint"):
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
            self.order.set_state(state["order"])
            torch.set_rng_state(state["rng"])
            self.restore_extra(state)
            self.records = [self.record_from_dict(r) for r in state[self.records_key]]
            self.resumed_from = int(state["epoch"])
            self.seconds = float(state["seconds"])

    def run(self):
        """Train from where the checkpoint left off to the last epoch; the trainer's result."""
        data, progress = self.data, self.progress
        self.resume()
        last_finite = LastFinite(self.model, self.resumed_from)

        def diverged(epoch: int, step: int, lr: float, why: str) -> TrainingDiverged:
            last_finite.restore()
            self.set_mode(False)
            return TrainingDiverged(epoch, step, lr, why, last_finite.epoch, self.result())

        steps_per_epoch = -(-len(data.train) // self.batch_size)
        steps_in_all = self.epochs * steps_per_epoch
        if self.resumed_from < self.epochs:
            progress("training", f"epoch {self.resumed_from + 1} of {self.epochs}",
                     self.resumed_from * steps_per_epoch, steps_in_all, unit="steps")  # fmt: skip
        for epoch in range(self.resumed_from + 1, self.epochs + 1):
            wall = time.perf_counter()
            self.start_epoch(epoch)
            self.set_mode(True)
            total, count, start = 0.0, 0, self.clock()
            batches = torch.randperm(len(data.train), generator=self.order).split(self.batch_size)
            for step, ids in enumerate(batches, 1):
                self.start_step(ids)
                lr = self.optimizer.param_groups[0]["lr"]
                self.optimizer.zero_grad()
                loss = self.loss_fn(self.model(data.train.x[ids]), data.train.y[ids])
                if not math.isfinite(loss.item()):
                    raise diverged(epoch, step, lr, f"the loss is {loss.item()}")
                loss.backward()
                self.optimizer.step()
                self.schedule.step()
                broken = last_finite.first_nonfinite()
                if broken is not None:
                    raise diverged(epoch, step, lr, f"{broken} is NaN or infinite after the step")
                total += loss.item() * len(ids)
                count += len(ids)
                if step < len(batches):  # an epoch's last step is reported once it is scored
                    item = f"epoch {epoch} of {self.epochs}, step {step} of {len(batches)}"
                    progress("training", item, (epoch - 1) * steps_per_epoch + step, steps_in_all, unit="steps",
                             loss=total / count)  # fmt: skip
            train_seconds = self.clock() - start
            self.set_mode(False)
            extra = self.end_epoch(epoch)
            try:
                calib = evaluate(self.model, data.calib, name=f"the model after epoch {epoch}")
            except NonFiniteError:  # finite weights can still overflow to inf on the way through
                raise diverged(epoch, step, lr, "its calibration outputs are NaN or infinite") from None
            last_finite.keep(epoch)
            record = self.make_record(epoch, total / count, calib, train_seconds, extra)
            self.records.append(record)
            self.seconds += self.epoch_seconds(train_seconds, time.perf_counter() - wall)
            if self.path is not None:
                save_checkpoint(self.path, {
                    "identity": self.identity,
                    "epoch": epoch,
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "schedule": self.schedule.state_dict(),
                    "order": self.order.get_state(),
                    "rng": torch.get_rng_state(),
                    **self.extra_state(),
                    self.records_key: [self.record_to_dict(r) for r in self.records],
                    "seconds": self.seconds,
                })  # fmt: skip
            if self.on_epoch is not None:
                self.on_epoch(record)
            progress("training", f"epoch {epoch} of {self.epochs}", epoch * steps_per_epoch, steps_in_all,
                     unit="steps", loss=record.loss, calib=str(calib))  # fmt: skip
        self.set_mode(False)
        return self.result()


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig = TrainConfig(),
    on_epoch: Callable[[EpochLog], None] | None = None,
    checkpoint: str | Path | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``data.train``; score each epoch on ``data.calib``;
    ``progress`` (``sparsify_cnn.progress``) hears of every step, in phase "training".

    Two runs with the same config, data and initial weights give identical weights. With
    ``checkpoint``, the model, optimizer, schedule and random states are written there after
    every epoch (atomically); a later call with the same model (same initial weights), data and
    config continues from it and finishes with the weights an uninterrupted run reaches::

        train(model, data, TrainConfig.seed_recipe(epochs=30), checkpoint="run.ckpt")

    A NaN or infinite loss, parameter, buffer or calibration output raises ``TrainingDiverged``
    (epoch, step, learning rate) with the model back at the end of its last finite epoch.
    """
    if not data.labeled:
        raise InputError(f"data '{data.name}' has no labels: training needs labelled data")
    torch.manual_seed(config.seed)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    schedule = _schedule(optimizer, config, -(-len(data.train) // config.batch_size))
    identity = run_identity(model, data, config) if checkpoint is not None else None
    trainer = Trainer(model, data, config.epochs, config.batch_size, config.seed, optimizer, schedule,
                      checkpoint, identity, progress, on_epoch=on_epoch)  # fmt: skip
    return trainer.run()


class LastFinite:
    """A copy of a model's parameters and buffers as they were at the end of its last finite
    epoch (one copy of the weights in memory), and the check for NaN or infinity among them."""

    def __init__(self, model: nn.Module, epoch: int = 0):
        self.tensors: dict[str, torch.Tensor] = {}
        seen = set()
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if id(tensor) not in seen:  # a shared weight once
                seen.add(id(tensor))
                self.tensors[name] = tensor
        self.saved = [t.detach().clone() for t in self.tensors.values()]
        self.epoch = epoch  # the epoch whose end ``saved`` holds (0: the starting weights)

    def keep(self, epoch: int) -> None:
        """The model as it is now is the last finite state (the end of ``epoch``)."""
        with torch.no_grad():
            for saved, tensor in zip(self.saved, self.tensors.values()):
                saved.copy_(tensor)
        self.epoch = epoch

    def first_nonfinite(self) -> str | None:
        """The name of the first parameter or buffer holding NaN or infinity, or None."""
        for name, tensor in self.tensors.items():
            if tensor.is_floating_point() and not bool(tensor.detach().isfinite().all()):
                return name
        return None

    def restore(self) -> None:
        """Put the last finite state back into the model."""
        with torch.no_grad():
            for saved, tensor in zip(self.saved, self.tensors.values()):
                tensor.copy_(saved)


def _schedule(optimizer, config: TrainConfig, steps_per_epoch: int):
    """Stepped once per batch, so both kinds checkpoint and resume the same way."""
    if config.schedule == "step":
        steps = [m * steps_per_epoch for m in config.milestones]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, steps, gamma=config.gamma)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, config.epochs * steps_per_epoch))


def run_identity(model: nn.Module, data: Dataset, config) -> dict:
    """What a checkpoint must have been written by: this config (a ``TrainConfig`` or anything
    with ``to_dict``), this data, these initial weights."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return {"config": config.to_dict(), "data": data.fingerprint(), "initial_weights": digest.hexdigest()[:16]}


# The advice every refused checkpoint gets (the CLI's --no-resume ignores it and starts over).
START_OVER = "remove it or rerun with --no-resume to start over"


def load_checkpoint(path: Path, identity: dict, what: str) -> dict:
    """The state saved at ``path`` by ``save_checkpoint``, if ``identity`` wrote it: a file of
    another run, or one that is not such a checkpoint, is an ``InputError`` (one line)."""
    try:
        with warnings.catch_warnings():  # torch warns of a foreign pickle's protocol before refusing it
            warnings.filterwarnings("ignore", message=r"Detected pickle protocol \d+", category=UserWarning)
            state = torch.load(path, weights_only=True)  # never unpickles code
        written_by = state["identity"]
        model = state["model"]
        if not isinstance(written_by, dict) or not all(isinstance(t, torch.Tensor) for t in model.values()):
            raise TypeError("not a checkpoint's contents")
    except Exception as error:  # any unreadable file gets the same advice
        raise InputError(f"{what} '{path}' is unreadable ({type(error).__name__}); {START_OVER}") from error
    for name, tensor in model.items():  # written before checkpoints refused NaN
        check_finite(tensor, f"{what} '{path}', {name}", hint=f"; {START_OVER}")
    if written_by != identity:
        differs = ", ".join(key.replace("_", " ") for key in identity if written_by.get(key) != identity[key])
        raise InputError(f"{what} '{path}' was written by another run (other {differs or 'contents'}); {START_OVER}")
    return state


@contextlib.contextmanager
def checkpoint_contents(path: Path, what: str):
    """Restoring from a checkpoint whose contents do not fit the run (a missing key, a tensor of
    another shape) is one ``InputError`` line."""
    try:
        yield
    except InputError:
        raise
    except Exception as error:
        why = (str(error).splitlines() or [""])[0][:200]
        message = f"{what} '{path}' does not fit this run ({type(error).__name__}: {why}); {START_OVER}"
        raise InputError(message) from error


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` whole or not at all: a kill mid-write leaves the previous checkpoint."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot write '{path}': {error.strerror or error}") from error
    write_buffered(path, lambda f: torch.save(state, f))  # torch aborts the process on a full disk
