"""Theoretical against measured, end to end and layer by layer, dense against transformed, on
every backend, in one process.

    result = bench(dense_gm, images, BenchConfig(batches=(1, 32)), transformed=rewritten_gm)
    print(render_markdown(result))

For each batch size the dense and the transformed model (and, per layer, each inserted op and
the dense layer it replaced) are compiled or prepared on every backend first, then timed in
interleaved rounds (see ``report.timing.interleaved_ms``), so that a busy machine slows the
candidates of one row alike. Inputs are real images; each layer is timed on the activations
that reach it, which matters for data-dependent ops (zero prediction).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import torch
from torch import fx, nn

from ..errors import InputError
from ..ops.base import CostedOp
from ..progress import Progress, silent
from ..report.timing import interleaved_ms
from ..transform.accounting import account
from ..transform.layers import tensor_shape
from ..transform.suffix import record_op_inputs
from .crossover import WithResidual
from .runners import BACKENDS, BackendUnavailable, TVMSettings, make_runner

# --baseline -> the dense backend whose time speedups divide ("fastest": whichever ran fastest)
BASELINES = {"fastest": None, "eager": "eager", "compile": "compile", "ort": "ort", "tvm-dense": "tvm"}


@dataclass(frozen=True)
class BenchConfig:
    """What to time and how: batch sizes, backends, the reference that speedups divide, TVM's
    settings, and the timing protocol (warm-up runs, then ``rounds`` of ``number`` runs)."""

    batches: tuple[int, ...] = (1, 32)
    backends: tuple[str, ...] = ("eager", "compile", "ort", "tvm")  # ort: a note where onnxruntime is missing
    baseline: str = "fastest"
    tvm: TVMSettings = field(default_factory=TVMSettings)
    rounds: int = 7
    number: int = 1
    warmup: int = 2
    layers: bool = True

    def __post_init__(self):
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown:
            raise InputError(f"unknown backend {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
        if self.baseline not in BASELINES:
            raise InputError(f"unknown baseline '{self.baseline}'; choose from {', '.join(BASELINES)}")
        if BASELINES[self.baseline] is not None and BASELINES[self.baseline] not in self.backends:
            raise InputError(f"baseline '{self.baseline}' needs the {BASELINES[self.baseline]} backend")
        if "tvm" not in self.backends:
            raise InputError("the tvm backend is what sparsify deploys: it cannot be left out")
        if not self.batches or min(self.batches) < 1:
            raise InputError("batch sizes must be positive")


@dataclass
class Timings:
    """Median milliseconds per backend (None: not run; ``notes`` says why)."""

    ms: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


@dataclass
class Entry:
    """One model or layer at one batch size: its MACs per image and its timings, dense and (when
    something was transformed) transformed."""

    scope: str  # "model" or "layer"
    name: str
    kind: str  # the technique ("dense" when nothing is transformed)
    batch: int
    dense_macs: int
    macs: int
    dense: Timings
    transformed: Timings | None = None

    @property
    def theoretical(self) -> float:
        return self.dense_macs / self.macs if self.macs else float("inf")

    def speedup(self, baseline: str) -> float | None:
        """Measured: the baseline's dense time over the transformed TVM time (for a dense entry:
        over the dense TVM time, i.e. how compiled dense compares with the baseline)."""
        return _ratio(self.baseline_ms(baseline), (self.transformed or self.dense).ms.get("tvm"))

    def dense_speedup(self, baseline: str) -> float | None:
        """The baseline's dense time over the dense TVM time."""
        return _ratio(self.baseline_ms(baseline), self.dense.ms.get("tvm"))

    def baseline_ms(self, baseline: str) -> float | None:
        """The dense time speedups divide: one backend's, or with "fastest" the least of every
        backend that ran (this tool's dense code included)."""
        if BASELINES[baseline] is not None:
            return self.dense.ms.get(BASELINES[baseline])
        return min((ms for ms in self.dense.ms.values() if ms is not None), default=None)

    def fastest_dense(self) -> str | None:
        """The backend that ran the dense model fastest."""
        timed = {backend: ms for backend, ms in self.dense.ms.items() if ms is not None}
        return min(timed, key=timed.get) if timed else None

    @property
    def below_crossover(self) -> bool:
        """The transformed kernel is not faster than the dense one on TVM."""
        if self.transformed is None:
            return False
        dense, mine = self.dense.ms.get("tvm"), self.transformed.ms.get("tvm")
        return dense is not None and mine is not None and mine >= dense


@dataclass
class BenchResult:
    label: str
    technique: str | None
    config: BenchConfig
    threads: dict
    entries: list[Entry]

    def to_dict(self) -> dict:
        rows = []
        for e in self.entries:
            row = asdict(e)
            row.update(theoretical=e.theoretical, speedup=e.speedup(self.config.baseline), fastest_dense=e.fastest_dense(),
                       dense_speedup=e.dense_speedup(self.config.baseline), below_crossover=e.below_crossover)  # fmt: skip
            rows.append(row)
        config = asdict(self.config)
        config["tvm"]["records"] = str(self.config.tvm.records) if self.config.tvm.records else None
        return {"label": self.label, "technique": self.technique, "config": config, "threads": self.threads,
                "entries": rows}  # fmt: skip


def bench(
    dense: fx.GraphModule,
    images: torch.Tensor,
    config: BenchConfig = BenchConfig(),
    transformed: fx.GraphModule | None = None,
    label: str = "model",
    progress: Progress | None = None,
) -> BenchResult:
    """Time ``dense`` (and ``transformed``, a rewrite of it) end to end and, with
    ``config.layers``, every inserted op against the dense layer it replaced; ``progress``
    hears of each row (phase "bench") and of TVM's tuning."""
    if len(images) == 0:
        raise InputError("benchmarking needs at least one input image")
    ops = _inserted_ops(transformed) if transformed is not None else {}
    technique = ",".join(sorted({op.kind for op in ops.values()})) or None
    dense_total = account(dense).total_macs
    entries = []
    progress = progress or silent
    rows = len(config.batches) * (1 + (len(ops) if config.layers else 0))  # layers saving nothing are left out

    def report(item: str, **extra) -> None:
        progress("bench", item, len(entries), rows, unit="rows", at_most=True, **extra)

    for batch in config.batches:
        x = _batch_of(images, batch)
        macs = dense_total
        if transformed is not None:
            inputs = record_op_inputs(transformed, ops, x)  # also counts data-dependent MACs on x
            macs = account(transformed).total_performed_macs
        report(f"model at batch {batch}")
        entry = Entry("model", label, technique or "dense", batch, dense_total, macs,
                      *_time({"dense": dense, "transformed": transformed}, x, config, progress))  # fmt: skip
        entries.append(entry)
        if transformed is None or not config.layers:
            continue
        for node_name, op in ops.items():
            args = inputs.get(node_name)
            if args is None:
                continue  # not reached by this input
            cost = op.cost(tuple(args[0].shape), _out_shape(transformed, node_name, batch))
            if cost.performed_macs >= cost.dense_macs:
                continue  # nothing saved here (e.g. rate 0): the layer runs as the dense one
            layer = Entry("layer", op.layer_name or node_name, op.kind, batch, cost.dense_macs, cost.performed_macs,
                          Timings(), Timings())  # fmt: skip
            dense_layer, transformed_layer = op.dense_layer(), op
            if len(args) > 1:  # a residual input, fed as the constant it was
                dense_layer, transformed_layer = WithResidual(dense_layer, args[1]), WithResidual(op, args[1])
            report(f"layer {layer.name} at batch {batch}")
            layer.dense, layer.transformed = _time({"dense": dense_layer, "transformed": transformed_layer}, args[0],
                                                   config, progress)  # fmt: skip
            entries.append(layer)
    report("every row timed", end=True)
    threads = {"torch": torch.get_num_threads(), "tvm": os.environ.get("TVM_NUM_THREADS", "all cores")}
    return BenchResult(label, technique, config, threads, entries)


def _time(variants: dict[str, nn.Module | None], x: torch.Tensor, config: BenchConfig,
          progress: Progress) -> tuple[Timings, Timings | None]:  # fmt: skip
    """Prepare every (variant, backend) runner, then time them all interleaved."""
    timings = {name: Timings() if module is not None else None for name, module in variants.items()}
    runners, slots = [], []
    for name, module in variants.items():
        if module is None:
            continue
        _quiet(module)
        for backend in config.backends:
            try:
                runners.append(make_runner(backend, module, x, config.tvm, progress))
                slots.append((name, backend))
            except BackendUnavailable as error:
                timings[name].ms[backend] = None
                timings[name].notes[backend] = str(error)
    for (name, backend), ms in zip(slots, interleaved_ms(runners, config.rounds, config.number, config.warmup)):
        timings[name].ms[backend] = ms
    return timings["dense"], timings.get("transformed")


def _ratio(reference: float | None, mine: float | None) -> float | None:
    return reference / mine if reference and mine else None


def _inserted_ops(gm: fx.GraphModule) -> dict[str, CostedOp]:
    """Node name -> inserted op, in graph order."""
    return {
        node.name: gm.get_submodule(node.target)
        for node in gm.graph.nodes
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), CostedOp)
    }


def _out_shape(gm: fx.GraphModule, node_name: str, batch: int) -> tuple[int, ...]:
    node = next(n for n in gm.graph.nodes if n.name == node_name)
    return (batch, *tensor_shape(node)[1:])


def _quiet(module: nn.Module) -> None:
    """Stop data-dependent ops from counting while they are timed (counting costs time)."""
    for sub in module.modules():
        if hasattr(sub, "track_stats"):
            sub.track_stats = False


def _batch_of(images: torch.Tensor, batch: int) -> torch.Tensor:
    """``batch`` images: the first ones, cycled when there are fewer."""
    reps = -(-batch // len(images))
    return images.repeat(reps, *([1] * (images.dim() - 1)))[:batch].contiguous()
