"""Training with STAN and the seed's baselines: seeded SGD (or Adam) whose batches carry the ids
of their samples, so the entry matrix is indexed by sample and the data may be shuffled.

``fit`` rewrites a captured graph for training (``techniques/stan/rewrite.py``), checks the entry matrix's
memory before allocating it, trains on the epoch schedule, measures every covered layer's
times, and returns the trained graph with plain layers and a report (coverage per layer and
epoch, t_f / t_b / t_e / t_i, measured and predicted speedup). A NaN or infinite loss, weight
or calibration output stops it with ``TrainingDiverged``, whose ``result`` holds the graph as it
was at the end of the last finite epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import torch
from torch import fx, nn

from ...config import Config
from ...data import Dataset
from ...errors import InputError
from ...evaluate import Score
from ...models.caffe_cifar import WithinChannelLRN
from ...option_types import format_bytes
from ...progress import Progress
from ...training import Trainer, run_identity
from ...transform.layers import find_layers
from ...transform.rewrite import copy_graph_module
from .baselines import MePropLinear
from .conv import StanContext, StanConv
from .entry import EntryStore, estimate_bytes
from .rewrite import (
    InsertedDropout,
    StanConfig,
    insert_conv_dropout,
    insert_dropout_before,
    insert_meprop,
    insert_stan_convs,
    stan_layers,
    strip_training_ops,
)
from .schedule import BUILD, DENSE, SKIP, epoch_kind
from .timing import LayerTimes, predicted_speedup

OPTIMIZERS = ("sgd", "adam")
DEFAULT_MAX_ENTRY_MEMORY = 2 * 2**30


@dataclass(frozen=True)
class TrainSetup(Config):
    """Everything ``sparsify train`` sets beyond the model and data; what ``tune-hparams`` writes.

    layer_weight_decay: layer-name glob -> L2 penalty for that layer's parameters (the first
        matching glob wins; other parameters get ``weight_decay``).
    model_options: options of a zoo model's factory (the MLP's ``hidden`` and ``dropout``).
    lrn: ``alpha`` (scale) and ``beta`` (power) for every within-channel LRN (AlexLRN).
    classifier_dropout: dropout on the input of the last linear layer (the ResNet preset).
    conv_dropout: dropout on the output of the convs matching ``dropout_layers`` (all: none given).
    meprop_k: meProp's top-k on every linear layer but the last (0: off).
    stan: STAN on the convs of ``stan.layers`` (None: off).
    """

    epochs: int = 8
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    optimizer: str = "sgd"
    layer_weight_decay: dict[str, float] = field(default_factory=dict)
    model_options: dict = field(default_factory=dict)
    lrn: dict[str, float] = field(default_factory=dict)
    classifier_dropout: float = 0.0
    conv_dropout: float = 0.0
    dropout_layers: tuple[str, ...] = ()
    meprop_k: int = 0
    stan: StanConfig | None = None
    version: int = 1

    FIELDS_NAME = "training settings"

    def __post_init__(self):
        if self.epochs < 0:
            raise InputError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise InputError(f"learning rate must be > 0, got {self.lr}")
        if self.momentum < 0:
            raise InputError(f"momentum must be >= 0, got {self.momentum}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"unknown optimizer '{self.optimizer}'; choose one of: {', '.join(OPTIMIZERS)}")
        for name, value in {"weight decay": self.weight_decay, **self.layer_weight_decay}.items():
            if value < 0:
                raise InputError(f"weight decay ({name}) must be >= 0, got {value}")
        if set(self.lrn) - {"alpha", "beta"}:
            raise InputError(f"lrn takes alpha and beta, got {', '.join(sorted(self.lrn))}")
        for name, rate in (("classifier dropout", self.classifier_dropout), ("conv dropout", self.conv_dropout)):
            if not 0 <= rate < 1:
                raise InputError(f"{name} rate must be in [0, 1), got {rate}")
        if self.meprop_k < 0:
            raise InputError(f"meProp k must be >= 0 (0: off), got {self.meprop_k}")
        object.__setattr__(self, "dropout_layers", tuple(self.dropout_layers))


@dataclass
class EpochRecord:
    """One epoch: its kind, mean loss, calibration score, training seconds (no evaluation) and,
    per STAN layer, coverage (fraction of outputs covered), computed (fraction the skipping
    forward computed), theta and seconds spent in forward / entry / skip / backward."""

    epoch: int
    kind: str
    loss: float
    calib: Score
    seconds: float
    layers: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**asdict(self), "calib": asdict(self.calib)}


@dataclass
class FitResult:
    """The trained graph (plain layers, eval mode) and what training measured."""

    graph_module: fx.GraphModule
    setup: TrainSetup
    epochs: list[EpochRecord]
    seconds: float
    rewrites: dict[str, dict[str, str]]
    entry_bytes: int = 0
    outputs: dict[str, int] = field(default_factory=dict)  # per STAN layer: outputs per sample
    resumed_from: int = 0  # the epoch a checkpoint had reached (0: started from scratch)

    def coverage(self, kind: str = BUILD) -> float:
        """Coverage over every STAN layer (weighted by outputs), mean over the epochs of ``kind``;
        with kind "computed": the fraction the skipping epochs computed."""
        key, kind = ("computed", SKIP) if kind == "computed" else ("coverage", kind)
        epochs = [e for e in self.epochs if e.kind == kind]
        total = sum(self.outputs.values())
        if not epochs or not total:
            return 1.0 if key == "computed" else 0.0
        return sum(n * e.layers[name][key] for e in epochs for name, n in self.outputs.items()) / (total * len(epochs))

    def layer_times(self) -> dict[str, LayerTimes]:
        """Per STAN layer: seconds per epoch of each kind (means over the epochs of that kind)."""
        names = list(self.epochs[0].layers) if self.epochs else []
        times = {}
        for name in names:
            dense = [e.layers[name]["forward_s"] for e in self.epochs if e.kind in (DENSE, BUILD)]
            t_f = _mean(dense)
            t_skip = _mean([e.layers[name]["skip_s"] for e in self.epochs if e.kind == SKIP], t_f)
            times[name] = LayerTimes(
                t_f=t_f,
                t_b=_mean([e.layers[name]["backward_s"] for e in self.epochs]),
                t_e=_mean([e.layers[name]["entry_s"] for e in self.epochs if e.kind == BUILD]),
                t_skip=t_skip,
            )
        return times

    def dense_epoch_seconds(self) -> float:
        """One dense epoch: measured in dense epochs, else an entry-matrix epoch less building E."""
        dense = [e.seconds for e in self.epochs if e.kind == DENSE]
        if dense:
            return _mean(dense)
        return _mean([e.seconds - sum(s["entry_s"] for s in e.layers.values()) for e in self.epochs if e.kind == BUILD])

    def measured_speedup(self, dense_epoch_seconds: float | None = None) -> float:
        """N dense epochs over this run's training time (dense epochs from this run if not given)."""
        dense = dense_epoch_seconds or self.dense_epoch_seconds()
        return len(self.epochs) * dense / self.seconds if self.seconds else 1.0

    def predicted_speedup(self, dense_epoch_seconds: float | None = None) -> float:
        """The seed's timing model fed with this run's t_i and t_e."""
        stan = self.setup.stan
        if stan is None or not self.epochs:
            return 1.0
        times = self.layer_times().values()
        return predicted_speedup(
            len(self.epochs), stan.pre_epochs, stan.period, dense_epoch_seconds or self.dense_epoch_seconds(),
            t_i=sum(t.t_i for t in times), t_e=sum(t.t_e for t in times),
        )  # fmt: skip

    def to_dict(self) -> dict:
        return {
            "setup": self.setup.to_dict(),
            "seconds": self.seconds,
            "rewrites": self.rewrites,
            "entry_bytes": self.entry_bytes,
            "outputs": self.outputs,
            "epochs": [e.to_dict() for e in self.epochs],
            "layer_times": {name: t.to_dict() for name, t in self.layer_times().items()},
            "dense_epoch_seconds": self.dense_epoch_seconds() if self.setup.stan else None,
            "speedup": {"measured": self.measured_speedup(), "predicted": self.predicted_speedup()}
            if self.setup.stan
            else None,
        }


def fit(
    gm: fx.GraphModule,
    data: Dataset,
    setup: TrainSetup = TrainSetup(),
    *,
    max_entry_memory: int | None = DEFAULT_MAX_ENTRY_MEMORY,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    on_rewrite: Callable[[dict[str, dict[str, str]], int], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    checkpoint: str | Path | None = None,
    progress: Progress | None = None,
) -> FitResult:
    """Train a copy of ``gm`` (a captured graph with shapes) on ``data.train`` with ``setup``.
    ``clock`` times epochs and layers (``time.thread_time`` measures CPU seconds, which other
    processes on a shared machine do not inflate; with one thread they are the work done).
    With ``checkpoint``, everything the next epoch depends on (weights, optimizer, schedule,
    random states, the entry matrix) is saved there after every epoch; a later call with the
    same graph, data and setup resumes from it and ends with the weights of an uninterrupted run.
    ``progress`` (``sparsify_cnn.progress``) hears of every step, in phase "training".

    Example::

        setup = TrainSetup(epochs=4, batch_size=100, stan=StanConfig("stan-lite", theta=0.1, pre_epochs=1))
        result = fit(capture(build("cq"), (1, 3, 32, 32)).graph_module, load_data("digits", (3, 32, 32)), setup)
        result.epochs[1].layers["conv2"]["coverage"], result.predicted_speedup()
    """
    if not data.labeled:
        raise InputError(f"data '{data.name}' has no labels: training needs labelled data")
    torch.manual_seed(setup.seed)
    identity = run_identity(gm, data, setup) if checkpoint is not None else None
    gm = copy_graph_module(gm)
    rewrites, context = _rewrite(gm, setup, len(data.train), max_entry_memory)
    if context:
        context.clock = clock
    entry_bytes = context.store.nbytes if context else 0
    outputs = {name: t * h * w for name, (t, h, w) in context.store.shapes.items()} if context else {}
    if on_rewrite is not None:
        on_rewrite(rewrites, entry_bytes)
    optimizer = _optimizer(gm, setup)
    steps = max(1, setup.epochs * -(-len(data.train) // setup.batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    trainer = StanTrainer(gm, data, setup, context, optimizer, schedule, checkpoint, identity, clock=clock,
                          on_epoch=on_epoch, progress=progress)  # fmt: skip
    trainer.rewrites, trainer.entry_bytes, trainer.outputs = rewrites, entry_bytes, outputs  # for the report
    return trainer.run()


class StanTrainer(Trainer):
    """The shared loop, plus STAN's epoch kinds (dense, build the entry matrix, skip), the batch's
    sample ids for the entry matrix, per-layer timings in each record, and E in the checkpoint."""

    records_key = "records"

    def __init__(self, gm: fx.GraphModule, data: Dataset, setup: TrainSetup, context: StanContext | None, optimizer,
                 schedule, checkpoint: str | Path | None, identity: dict | None, **options):  # fmt: skip
        super().__init__(gm, data, setup.epochs, setup.batch_size, setup.seed, optimizer, schedule, checkpoint,
                         identity, **options)  # fmt: skip
        self.setup, self.context, self.kind = setup, context, DENSE
        self.stan_convs = {name: m for name, m in gm.named_modules() if isinstance(m, StanConv)}
        self.rewrites: dict[str, dict[str, str]] = {}
        self.entry_bytes, self.outputs = 0, {}

    def set_mode(self, training: bool) -> None:
        _set_mode(self.model, training)

    def start_epoch(self, epoch: int) -> None:
        self.kind = epoch_kind(epoch - 1, self.setup.stan.pre_epochs, self.setup.stan.period) if self.context else DENSE
        if self.context:
            self.context.kind = self.kind
            self.context.take_stats()

    def start_step(self, ids: torch.Tensor) -> None:
        if self.context:
            self.context.ids = ids

    def end_epoch(self, epoch: int) -> dict:
        if not self.context:
            return {}
        return _layer_record(self.context.take_stats(), self.context.store.shapes, self.kind, self.records)

    def make_record(self, epoch, loss, calib, seconds, extra) -> EpochRecord:
        return EpochRecord(epoch, self.kind, loss, calib, seconds, extra)

    def record_to_dict(self, record: EpochRecord) -> dict:
        return record.to_dict()

    def record_from_dict(self, data: dict) -> EpochRecord:
        return EpochRecord(**{**data, "calib": Score(**data["calib"])})

    def extra_state(self) -> dict:
        return {"stan": _stan_state(self.context, self.stan_convs) if self.context else None}

    def restore_extra(self, state: dict) -> None:
        if self.context:
            _restore_stan(self.context, self.stan_convs, state["stan"])

    def epoch_seconds(self, train_seconds: float, wall_seconds: float) -> float:
        return train_seconds  # the seed's timing model compares training time alone

    def result(self) -> FitResult:
        plain = strip_training_ops(self.model, inplace=True).graph_module
        _set_mode(plain, False)
        return FitResult(plain, self.setup, self.records, self.seconds, self.rewrites, self.entry_bytes, self.outputs,
                         self.resumed_from)  # fmt: skip


def _stan_state(context: StanContext, convs: dict[str, StanConv]) -> dict:
    """What STAN carries from one epoch to the next: E, the quantile sampler's generator, and
    each layer's coverage of the last entry-matrix epoch and phase."""
    store = context.store
    return {
        "rows": dict(store.rows),
        "thetas": dict(store.thetas),
        "generator": context.generator.get_state(),
        "convs": {name: {"built": list(m.built), "phase": m.phase} for name, m in convs.items()},
    }


def _restore_stan(context: StanContext, convs: dict[str, StanConv], state: dict) -> None:
    store = context.store
    for kept, saved in ((store.rows, state["rows"]), (store.thetas, state["thetas"])):
        if set(kept) != set(saved):
            raise ValueError(f"entry matrix layers {sorted(saved)}, expected {sorted(kept)}")
        for name, tensor in saved.items():
            if tensor.shape != kept[name].shape:
                raise ValueError(f"entry matrix of {name} is {tuple(tensor.shape)}, expected {tuple(kept[name].shape)}")
            kept[name].copy_(tensor)  # in place: E's size and type were checked and allocated
    context.generator.set_state(state["generator"])
    for name, module in convs.items():
        module.built = [int(n) for n in state["convs"][name]["built"]]
        module.phase = str(state["convs"][name]["phase"])


def entry_memory(gm: fx.GraphModule, stan: StanConfig, samples: int) -> tuple[int, dict[str, tuple[int, int, int]]]:
    """Bytes the entry matrix of ``stan`` needs on ``gm`` for ``samples`` training samples, and
    the output shape (T, H', W') of every covered layer."""
    shapes, skipped = stan_layers(gm, stan.layers)
    if not shapes:
        why = "; ".join(f"{name}: {reason}" for name, reason in skipped.items()) or "the model has no conv layer"
        raise InputError(f"STAN has no conv layer to cover ({why})")
    return estimate_bytes(shapes, samples, stan.variant), shapes


def _rewrite(gm, setup: TrainSetup, samples: int, max_entry_memory: int | None):
    rewrites: dict[str, dict[str, str]] = {}
    if setup.lrn:
        lrns = [m for m in gm.modules() if isinstance(m, WithinChannelLRN)]
        if not lrns:
            raise InputError("the setup sets LRN alpha / beta but the model has no within-channel LRN")
        for module in lrns:
            for key, value in setup.lrn.items():
                setattr(module, key, value)
    if setup.classifier_dropout:
        linears = [layer.name for layer in find_layers(gm) if layer.kind == "linear"]
        if not linears:
            raise InputError("classifier dropout needs a linear layer; the model has none")
        rewrites["classifier_dropout"] = insert_dropout_before(gm, linears[-1], setup.classifier_dropout, True).inserted
    if setup.conv_dropout:
        rewrites["conv_dropout"] = insert_conv_dropout(
            gm, setup.conv_dropout, setup.dropout_layers, inplace=True
        ).inserted
    if setup.meprop_k:
        rewrites["meprop"] = insert_meprop(gm, setup.meprop_k, inplace=True).inserted
    context = None
    if setup.stan:
        needed, shapes = entry_memory(gm, setup.stan, samples)
        if max_entry_memory is not None and needed > max_entry_memory:
            outputs = sum(t * h * w for t, h, w in shapes.values())
            per = "fp16 values" if setup.stan.variant == "stan" else "bits"
            raise InputError(
                f"the STAN entry matrix needs {format_bytes(needed)} ({needed:,} bytes: {samples:,} samples x "
                f"{outputs:,} outputs of {', '.join(shapes)} as {per}), over --max-entry-memory "
                f"{format_bytes(max_entry_memory)}; raise the limit, cover fewer layers (--layers) or use stan-lite"
            )
        stan = setup.stan
        context = StanContext(EntryStore(shapes, samples, stan.variant), stan.theta, stan.coverage, stan.kernel,
                              seed=setup.seed)  # fmt: skip
        rewrites["stan"] = insert_stan_convs(gm, context, stan.layers, inplace=True).inserted
    return rewrites, context


def _optimizer(gm: nn.Module, setup: TrainSetup) -> torch.optim.Optimizer:
    owner = {}
    for layer in find_layers(gm):
        for p in (layer.weight, layer.bias):
            owner[id(p)] = layer.name
    for module in gm.modules():
        if isinstance(module, (StanConv, MePropLinear)):
            inner = module.conv if isinstance(module, StanConv) else module.linear
            for p in inner.parameters():
                owner[id(p)] = module.layer_name
    used = set()
    groups: dict[float, list] = {}
    for p in gm.parameters():
        decay = setup.weight_decay
        name = owner.get(id(p))
        for pattern, value in setup.layer_weight_decay.items():
            if name is not None and fnmatchcase(name, pattern):
                decay = value
                used.add(pattern)
                break
        groups.setdefault(decay, []).append(p)
    unused = sorted(set(setup.layer_weight_decay) - used)
    if unused:
        names = ", ".join(layer.name for layer in find_layers(gm)) or "none"
        raise InputError(f"layer weight decay for {', '.join(unused)} matches no layer; the layers are {names}")
    params = [{"params": ps, "weight_decay": wd} for wd, ps in groups.items()]
    if setup.optimizer == "adam":
        return torch.optim.Adam(params, lr=setup.lr)
    return torch.optim.SGD(params, lr=setup.lr, momentum=setup.momentum)


def _set_mode(gm: nn.Module, training: bool) -> None:
    try:
        gm.train(training)
    except NotImplementedError:  # torch.export modules fix their mode; ours still follow it
        for module in gm.modules():
            if isinstance(module, (StanConv, MePropLinear, InsertedDropout)):
                module.train(training)


def _layer_record(stats, shapes, kind: str, before: list[EpochRecord]) -> dict[str, dict[str, float]]:
    built = next((r for r in reversed(before) if r.kind == BUILD), None)
    record = {}
    for name in shapes:
        s = stats.get(name)
        if s is None:  # the layer never ran (no batch)
            continue
        if kind == SKIP:  # E is what the last entry-matrix epoch built
            coverage = built.layers[name]["coverage"] if built else 0.0
        else:
            coverage = s.covered / s.entries if s.entries else 0.0
        record[name] = {
            "coverage": coverage,
            "computed": s.computed / s.entries if s.skip and s.entries else 1.0,
            "theta": s.theta_sum / s.batches if s.batches else None,
            "kernel": s.kernel or None,
            "forward_s": s.forward,
            "entry_s": s.entry,
            "skip_s": s.skip,
            "backward_s": s.backward,
        }
    return record


def _mean(values, default: float = 0.0) -> float:
    values = list(values)
    return sum(values) / len(values) if values else default
