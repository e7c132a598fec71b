"""The main job for zero prediction: insert Spatial ops, search their masks under the accuracy
budget, verify on the whole network, score the held-out test split, and write the plan, the
rewritten model and the report."""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import fx

from ...bench.crossover import CrossoverResult, LayerTimer, check_crossover, leave_dense_within_budget, time_layer
from ...distributed import SINGLE, World, ranks_on_this_machine
from ...errors import InputError
from ...evaluate import Score
from ...job import start_job
from ...pipeline import Prepared
from ...plan import Plan
from ...progress import PhaseTimes
from ...search.checkpoint import SPATIAL_RECORD
from ...transform.accounting import Accounting, account
from ...transform.suffix import record_op_inputs
from .evaluator import Evaluator
from .rewrite import SpatialConfig, insert_spatial_ops, nothing_inserted, spatial_ops
from .search import Progress, SearchConfig, SearchResult, SpatialSearch


@dataclass
class OptimizeResult:
    plan: Plan
    search: SearchResult
    graph_module: fx.GraphModule  # the rewritten model, masks installed
    dense: Accounting
    sparse: Accounting  # performed MACs measured on the test split
    calib_macs_saved: float  # per image, measured on calib with the verified masks (crossover applied)
    scores: dict[str, dict[str, Score]]  # split -> {"dense": ..., "sparse": ...}
    skipped: dict[str, str]
    metric: str
    checkpoint_resumed: int = 0
    crossover: CrossoverResult | None = None  # None: not checked
    warnings: list[str] = field(default_factory=list)  # about the run's meaning, e.g. a one-class dense model
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase of the job, in order

    @property
    def seconds(self) -> float:
        return self.search.seconds


def optimize_spatial(
    prepared: Prepared,
    spatial: SpatialConfig = SpatialConfig(),
    search: SearchConfig = SearchConfig(),
    metric: str = "auto",
    checkpoint: str | Path | None = None,
    resume: bool = True,
    progress: Progress | None = None,
    crossover: LayerTimer | None = None,
    measured: LayerTimer | None = None,
    world: World = SINGLE,
    max_cache_bytes: int | None = None,
) -> OptimizeResult | None:
    """Search Spatial masks for ``prepared`` (a model with data) and verify them; with
    ``crossover``, leave dense every layer whose kernel is not faster than its dense layers
    (timed on calibration activations). ``search.cost == "measured"`` times layer options with
    ``measured`` (default: this CPU). With a ``world`` of several ranks, every rank searches on
    its share of the images; the main rank verifies and gets the result, the others None.
    ``max_cache_bytes`` bounds the dense activations kept at once (default: half of this
    machine's memory, shared by its ranks on it). Example::

        result = optimize_spatial(prepare("lenet.pt2", data="digits"), search=SearchConfig(epsilon=0.01))
        result.plan.save("plan.json")
    """
    times = PhaseTimes()
    with times.span("dense predictions"):
        job = start_job(prepared, metric, "a search", world=world)
    data, metric, dense_gm = job.data, job.metric, job.dense_gm
    result = insert_spatial_ops(dense_gm, spatial)
    if not result.inserted:
        raise InputError(nothing_inserted(result.skipped))
    gm = result.graph_module
    target = data.calib.y if metric == "top1" else job.dense_predictions
    identity = {
        **job.identity,  # graph, weights, data: a retrained model must not resume these records
        "spatial": spatial.to_dict(),
        "search": search.to_dict(),
        "metric": metric,
    }
    store = job.search_checkpoint(checkpoint, identity, SPATIAL_RECORD, resume, world)
    with times.span("dense cache"):
        budget = max_cache_bytes or default_cache_bytes()
        x, y, network = data.calib.x, target, None
        sample = search_sample(len(x), search.search_images)
        if len(sample) < len(x):  # layer options on the sample; whole networks on every image
            network = Evaluator(gm, x, y, batch_size=search.batch_size, world=world, layers=False,
                                dense_predictions=job.dense_predictions)  # fmt: skip
            x, y = x[sample], y[sample]
        evaluator = Evaluator(gm, x, y, batch_size=search.batch_size, world=world, max_cache_bytes=budget)
    time_saved = None
    if search.cost == "measured":  # timed on the main rank alone: every rank takes its figures
        timed = _time_saved(gm, job.crossover_images, measured or LayerTimer()) if world.is_main else None
        time_saved = lambda layer, mask: world.from_main(lambda: timed(layer, mask))  # noqa: E731
    found = SpatialSearch(evaluator, search, store, progress, time_saved, network).run()
    times.update(found.phases)
    if not world.is_main:
        return None
    evaluator.install(found.masks)
    checked = None
    if crossover is not None:
        with times.span("crossover timing"):
            checked = check_crossover(gm, job.crossover_images, crossover)
        ops = spatial_ops(gm)

        def make_dense(name: str, dense: bool) -> None:
            ones = torch.ones_like(ops[name].mask)
            ops[name].set_mask(ones if dense else found.masks.get(name, ones))

        def holds() -> bool:
            return job.holds_budget(gm, search.epsilon, search.epsilon_kind)

        with times.span("crossover budget check") if checked.below_crossover else contextlib.nullcontext():
            checked = leave_dense_within_budget(checked, make_dense, holds)
    dense = account(dense_gm)
    with times.span("verification"):
        scores, calib_macs_saved = _verify(job, gm, dense)
    plan = job.plan(
        "spatial",
        config=spatial.to_dict(),
        masks={name: op.mask.clone() for name, op in spatial_ops(gm).items() if name in found.masks},
        search={**search.to_dict(), "metric": metric},
        results={split: {kind: score.value for kind, score in pair.items()} for split, pair in scores.items()}
        | {"calib_macs_saved": calib_macs_saved},
    )
    return OptimizeResult(
        plan=plan,
        search=found,
        graph_module=gm,
        dense=dense,
        sparse=account(gm),
        calib_macs_saved=calib_macs_saved,
        scores=scores,
        skipped=result.skipped,
        metric=metric,
        checkpoint_resumed=store.resumed,
        crossover=checked,
        warnings=job.warnings,
        phases=times.seconds,
    )


def search_sample(count: int, size: int | None, seed: int = 0) -> torch.Tensor:
    """Indices of the calibration images the per-layer levels score on: ``size`` of ``count``,
    drawn with ``seed``, in order; every image when ``size`` is None or not smaller."""
    if size is None or size >= count:
        return torch.arange(count)
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def default_cache_bytes() -> int | None:
    """Half of this machine's memory, shared by the ranks running on it (None, no bound, where
    the system does not say how much memory there is)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or no such name
        return None
    return memory // 2 // ranks_on_this_machine()


def _verify(job, gm: fx.GraphModule, dense: Accounting) -> tuple[dict[str, dict[str, Score]], float]:
    """Both models' scores on both splits, and the MACs per image the masks save on calib (the
    ops' counters are left holding the test split's pass, which the MAC table reports)."""
    for op in spatial_ops(gm).values():
        op.track_stats = True
        op.reset_stats()
    scores = {}
    for split_name in ("calib", "test"):
        scores[split_name] = {
            "dense": job.score(job.dense_gm, split_name, "the dense model"),
            "sparse": job.score(gm, split_name, "the model with Spatial ops"),
        }
        if split_name == "calib":
            calib_macs_saved = dense.total_macs - account(gm).total_performed_macs  # what the plan verified
            for op in spatial_ops(gm).values():
                op.reset_stats()
    return scores, calib_macs_saved


def _time_saved(gm: fx.GraphModule, images: torch.Tensor, timer: LayerTimer):
    """(layer, mask) -> milliseconds its Spatial op saves with ``mask`` against its dense layers,
    both compiled alone and run on the layer's activations for ``images``."""
    ops = spatial_ops(gm)
    inputs = record_op_inputs(gm, ops, images)
    cache = timer.timing_cache()
    dense_ms: dict[str, float] = {}

    def saved(layer: str, mask: torch.Tensor) -> float:
        op, args = ops[layer], inputs[layer]
        if layer not in dense_ms:
            dense_ms[layer] = time_layer(op.dense_layer(), args, timer, cache)
        trial = copy.deepcopy(op)
        trial.set_mask(mask)
        return dense_ms[layer] - time_layer(trial, args, timer, cache)

    return saved
