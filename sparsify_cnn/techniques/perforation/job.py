"""The main job for perforation: insert perforated convs, choose per-layer rates greedily under
a speed target or accuracy budget, optionally fine-tune, verify on the held-out split, and
return what the plan, the report and the compiler need."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import fx

from ...bench.crossover import CrossoverResult, LayerTimer, check_crossover, leave_dense_within_budget
from ...distributed import SINGLE, World
from ...errors import InputError
from ...evaluate import Score
from ...job import start_job
from ...pipeline import Prepared
from ...plan import Plan
from ...progress import PhaseTimes, Progress
from ...search.checkpoint import STEP_RECORD
from ...training import TrainConfig
from ...transform.accounting import Accounting, account
from ...transform.layers import find_layers, tensor_shape
from ...transform.match import find_next_pooling
from ...transform.rewrite import no_layer_message
from .masks import KEPT_FRACTIONS, impact_scores, kept_mask
from .op import PerforatedConv
from .rewrite import (
    PerforationConfig,
    insert_perforated_convs,
    perforated_ops,
)
from .search import CostModel, FixedMasks, GreedyRateSearch, RateSearchConfig, RateSearchResult


@dataclass
class PerforationOutcome:
    plan: Plan
    search: RateSearchResult
    graph_module: fx.GraphModule  # the rewritten model, rates installed (fine-tuned if asked)
    dense: Accounting
    sparse: Accounting
    scores: dict[str, dict[str, Score]]  # split -> {"dense", "perforated"[, "finetuned"]}
    skipped: dict[str, str]
    mask_notes: dict[str, str]  # layer -> how its mask was chosen when not as asked
    metric: str
    finetune: dict = field(default_factory=dict)  # config and per-epoch calib scores
    checkpoint_resumed: int = 0
    crossover: CrossoverResult | None = None  # None: not checked
    warnings: list[str] = field(default_factory=list)  # about the run's meaning, e.g. a one-class dense model
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase of the job, in order

    @property
    def seconds(self) -> float:
        """The search and the fine-tuning."""
        return self.search.seconds + self.finetune.get("seconds", 0.0)


def optimize_perforation(
    prepared: Prepared,
    perforation: PerforationConfig = PerforationConfig(),
    search: RateSearchConfig = RateSearchConfig(),
    metric: str = "auto",
    finetune: TrainConfig | None = None,
    measured: LayerTimer | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = True,
    progress: Progress | None = None,
    crossover: LayerTimer | None = None,
    world: World = SINGLE,
) -> PerforationOutcome | None:
    """Choose perforation rates for ``prepared`` (a model with data); with ``crossover``, leave
    dense every layer whose perforated kernel is not faster than its conv. With a ``world`` of
    several ranks, every rank searches on its share of the images; the main rank verifies,
    fine-tunes and gets the result, the others None. Example::

        result = optimize_perforation(prepare("cq.pt2", data="digits"), search=RateSearchConfig(speedup=2))
        result.plan.save("plan.json")
    """
    times = PhaseTimes()
    with times.span("dense predictions"):
        job = start_job(prepared, metric, "a rate search", finetune, world)
    data, metric, dense_gm = job.data, job.metric, job.dense_gm
    result = insert_perforated_convs(dense_gm, perforation)
    if not result.inserted:
        hint = "perforation takes k x k convs (k > 1) with maps of several positions; check --layers"
        raise InputError(no_layer_message("be perforated", result.skipped, hint))
    gm = result.graph_module
    labels = data.calib.y if metric == "top1" else None
    with times.span(f"{search.mask} masks"):
        masks, notes = _layer_masks(dense_gm, gm, data.calib.x, labels, search, job.dense_predictions, world)
    with times.span("layer timing" if search.cost == "measured" else "cost model"):
        cost = _cost_model(gm, dense_gm, prepared.captured.input_shape, search, measured, world)
    identity = {
        **job.identity,  # graph, weights, data: a retrained model must not resume these records
        "perforation": perforation.to_dict(),
        "search": search.to_dict(),
        "metric": metric,
        "measured": None if measured is None else {"target": measured.target, "trials": measured.tune_trials},
    }
    # Fine-tuning checkpoints next to the search's, so an interrupted run loses neither.
    finetune_checkpoint = Path(checkpoint).with_name("finetune-checkpoint.pt") if checkpoint is not None else None
    store = job.search_checkpoint(checkpoint, identity, STEP_RECORD, resume, world, also=(finetune_checkpoint,))
    with times.span("greedy steps"):
        found = GreedyRateSearch(gm, data.calib.x, labels, masks, search, cost, store, progress, world).run()
    if not world.is_main:
        return None
    checked = None
    if crossover is not None:
        with times.span("crossover timing"):
            checked = check_crossover(gm, job.crossover_images, crossover)
        ops = perforated_ops(gm)
        searched = {name: op.kept.clone() for name, op in ops.items()}

        def make_dense(name: str, dense: bool) -> None:
            ops[name].set_kept(torch.ones(ops[name].out_hw, dtype=torch.bool) if dense else searched[name])

        def holds() -> bool:
            return job.holds_budget(gm, search.epsilon, search.epsilon_kind)

        with times.span("crossover budget check") if checked.below_crossover else contextlib.nullcontext():
            checked = leave_dense_within_budget(checked, make_dense, holds)

    with times.span("verification"):
        scores = job.score_splits({"dense": (dense_gm, "the dense model"), "perforated": (gm, "the perforated model")})
    with times.span("fine-tuning") if finetune is not None and finetune.epochs > 0 else contextlib.nullcontext():
        finetune_log = job.finetune(gm, finetune, finetune_checkpoint, progress, scores, "perforated model")
    final = "finetuned" if finetune_log else "perforated"
    plan = job.plan(
        "perforation",
        config=perforation.to_dict(),
        masks={name: op.kept.clone() for name, op in perforated_ops(gm).items()},
        search={**search.to_dict(), "metric": metric, "finetune": finetune_log.get("config")},
        results={split: {kind: s.value for kind, s in pair.items()} for split, pair in scores.items()}
        | {"speedup": found.point.speedup, "cost_unit": found.cost_unit, "final": final},
    )  # fmt: skip
    return PerforationOutcome(
        plan=plan, search=found, graph_module=gm, dense=account(dense_gm), sparse=account(gm), scores=scores,
        skipped=result.skipped, mask_notes=notes, metric=metric, finetune=finetune_log,
        checkpoint_resumed=store.resumed, crossover=checked, warnings=job.warnings, phases=times.seconds,
    )  # fmt: skip


def _layer_masks(dense_gm, gm, x, labels, search: RateSearchConfig, dense_predictions, world: World = SINGLE):
    """Where each layer's masks come from, and notes where the mask type had to change
    (pooling structure without a pooling layer after the conv). Impact is scored on this rank's
    share of ``x``, summed over ranks."""
    ops = perforated_ops(gm)
    scores = {}
    if search.mask == "impact":
        # Label-free data: the dense model's predictions stand in for labels (the gradient of
        # the KL divergence to the dense output is zero at the dense network).
        target = labels if labels is not None else dense_predictions
        share = world.image_share(len(x))
        scores = impact_scores(gm, x[share], target[share], batch_size=min(search.batch_size, 64), world=world)
    convs = {layer.name: layer.node for layer in find_layers(dense_gm)}
    masks, notes = {}, {}
    for name, op in ops.items():
        kind, pooling = search.mask, None
        if kind == "pooling":
            pooling = find_next_pooling(dense_gm, convs[name])
            if pooling is None:
                kind = "grid"
                notes[name] = "no pooling layer follows: grid mask instead of pooling structure"
        masks[name] = [
            kept_mask(kind, op.out_hw, q, scores=scores.get(name), pooling=pooling, seed=search.seed) for q in KEPT_FRACTIONS
        ]
    return FixedMasks(masks), notes


def _cost_model(gm, dense_gm, input_shape, search: RateSearchConfig, measured: LayerTimer | None,
                world: World = SINGLE) -> CostModel:  # fmt: skip
    """T in MACs, or in milliseconds measured here (on the main rank alone: every rank takes its figures)."""
    if search.cost == "macs":
        return CostModel(gm)
    from ...codegen.measure import measure_ms

    measured = measured or LayerTimer()
    cache = measured.timing_cache()
    layer_input = {gm.get_submodule(n.target).layer_name: (1, *tensor_shape(n.args[0])[1:])
                   for n in gm.graph.nodes if n.op == "call_module" and isinstance(gm.get_submodule(n.target), PerforatedConv)}  # fmt: skip

    def layer_ms(op: PerforatedConv, kept) -> float:
        if bool(kept.all()):  # every position kept: the layer is its dense conv, compiled as the dense network's
            alone = op.dense_layer()
        else:
            alone = PerforatedConv(op.conv, op.out_hw, op.interpolation, op.layer_name, op.seed)
            alone.set_kept(kept)
        return cache.get_or_measure(alone, layer_input[op.layer_name], measured.target, measured.tune_trials, measured.records)

    batch = (1, *input_shape[1:])
    dense_ms = world.from_main(lambda: measure_ms(dense_gm, batch, target=measured.target,
                                                  tune_trials=measured.tune_trials, records=measured.records))  # fmt: skip
    return CostModel(gm, measure=lambda op, kept: world.from_main(lambda: layer_ms(op, kept)), dense_ms=dense_ms)
