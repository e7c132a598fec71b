"""The main job for structured sparse convolutions: insert SSC layers (per-layer map, preset or
parameter target), score them against the dense model, optionally fine-tune, and return what the
plan, the report and the compiler need. There is no search: the assignment is the choice."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from torch import fx

from ...bench.crossover import CrossoverResult, LayerTimer, check_crossover
from ...errors import InputError
from ...evaluate import Score
from ...job import start_job
from ...pipeline import Prepared
from ...plan import Plan
from ...progress import PhaseTimes, Progress
from ...training import TrainConfig
from ...transform.accounting import Accounting, account
from ...transform.rewrite import no_layer_message
from .rewrite import SSCAssignment, SSCConfig, insert_ssc


@dataclass
class SSCOutcome:
    plan: Plan
    assignment: SSCAssignment
    graph_module: fx.GraphModule  # the rewritten model (fine-tuned if asked)
    dense: Accounting
    sparse: Accounting
    scores: dict[str, dict[str, Score]]  # split -> {"dense", "ssc"[, "finetuned"]}
    metric: str
    config: SSCConfig  # as asked (the plan records the exact choices)
    seconds: float = 0.0  # insertion, scoring and training
    finetune: dict = field(default_factory=dict)  # config, seconds, per-epoch calib scores
    crossover: CrossoverResult | None = None  # None: not checked
    warnings: list[str] = field(default_factory=list)  # about the run's meaning, e.g. a one-class dense model
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase of the job, in order


def optimize_ssc(
    prepared: Prepared,
    config: SSCConfig,
    finetune: TrainConfig | None = None,
    metric: str = "auto",
    checkpoint: str | Path | None = None,
    crossover: LayerTimer | None = None,
    progress: Progress | None = None,
) -> SSCOutcome:
    """Replace convs of ``prepared`` by SSC layers as ``config`` says and score them; with
    ``crossover``, layers whose SSC kernels are not faster than their dense conv stay dense
    (checked before fine-tuning, so they train as dense convs); ``progress`` hears of the
    fine-tuning's steps. Example::

        outcome = optimize_ssc(prepare("cq.pt2", data="digits"), SSCConfig(target_fraction=0.3))
        outcome.plan.save("plan.json")
    """
    start, times = time.perf_counter(), PhaseTimes()
    with times.span("dense predictions"):
        job = start_job(prepared, metric, "SSC", finetune)
    dense_gm = job.dense_gm
    with times.span("choice of (g, p)"):
        result = insert_ssc(dense_gm, config)
    assignment = result.assignment
    if not result.inserted:
        hint = "SSC replaces dense k x k and 1x1 convs whose channels its (g, p) divide: try --technique perforation"
        raise InputError(no_layer_message("take SSC", result.skipped, hint))
    gm = result.graph_module
    checked = None
    if crossover is not None:
        with times.span("crossover timing"):
            checked = check_crossover(gm, job.crossover_images, crossover)
        if checked.left_dense:
            kept = {name: c for name, c in assignment.choices.items() if name not in checked.left_dense}
            if not kept:
                timings = ", ".join(f"{n} {v.transformed_ms:.3f} vs {v.dense_ms:.3f} ms" for n, v in checked.speeds.items())
                raise InputError(f"no SSC layer is faster than its dense conv on {crossover.target} ({timings}); "
                                 f"nothing to gain here (--no-crossover keeps them anyway)")  # fmt: skip
            exact = SSCConfig.exact(kept, pointwise_branch=config.pointwise_branch, init=config.init)
            gm = insert_ssc(dense_gm, exact).graph_module

    with times.span("verification"):
        scores = job.score_splits({"dense": (dense_gm, "the dense model"), "ssc": (gm, "the SSC model")})
    with times.span("fine-tuning") if finetune is not None and finetune.epochs > 0 else contextlib.nullcontext():
        finetune_log = job.finetune(gm, finetune, checkpoint, progress, scores, "SSC model")
    final = "finetuned" if finetune_log else "ssc"
    chosen = {name: c for name, c in assignment.choices.items() if checked is None or name not in checked.left_dense}
    exact = SSCConfig.exact(chosen, pointwise_branch=config.pointwise_branch, init=config.init)
    dense_acc, sparse_acc = account(dense_gm), account(gm)
    plan = job.plan(
        "ssc",
        config=exact.to_dict(),
        masks={},
        search={"asked": config.to_dict(), "metric": job.metric, "finetune": finetune_log.get("config"),
                "assignment": {"source": assignment.source, "fraction": assignment.fraction,
                               "target": assignment.target, "meets_target": assignment.meets_target,
                               "notes": assignment.notes, "skipped": assignment.skipped,
                               "choices": {name: list(c) for name, c in assignment.choices.items()}}},
        results={split: {kind: s.value for kind, s in pair.items()} for split, pair in scores.items()}
        | {"param_fraction": sparse_acc.total_params / dense_acc.total_params,
           "mac_fraction": sparse_acc.total_performed_macs / dense_acc.total_macs, "final": final},
    )  # fmt: skip
    return SSCOutcome(
        plan=plan, assignment=assignment, graph_module=gm, dense=dense_acc, sparse=sparse_acc, scores=scores,
        metric=job.metric, config=config, seconds=time.perf_counter() - start, finetune=finetune_log,
        crossover=checked, warnings=job.warnings, phases=times.seconds,
    )  # fmt: skip
