"""The main job, as every technique runs it: ``run`` hands the prepared model, the options and
the job's context (output, checkpoint, crossover timer, progress) to the technique's registered
job; what each job shares lives here: the metric it scores with (and whether the dense model
can give it meaning) and how the rewritten model is saved."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from .distributed import SINGLE, World
from .errors import DataError, InputError, NonFiniteError, count_nonfinite
from .evaluate import Score, logits, predict
from .model_io import save_program

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
        if getattr(module, "track_stats", False):  # an op's counters are not part of the program
            module.track_stats = False
    save_program(gm, tuple(input_shape[1:]), path, {"plan": "plan.json"})


@dataclass
class JobContext:
    """What the main job of any technique is given besides the model and its options."""

    out_dir: Path
    checkpoint: Path  # the search or training checkpoint
    resume: bool = True
    crossover: Any = None  # a bench.crossover.LayerTimer, or None: the crossover rule is not applied
    progress: Any = None  # a progress.Progress
    world: World = SINGLE  # this process's rank, when torchrun started several

    def measured_timer(self, target: str):
        """The layer timer a ``--cost measured`` search times its choices with (llvm when no
        artifact is compiled), cached in OUT/layer-timings.json."""
        from .bench.crossover import LayerTimer

        return LayerTimer(target="llvm" if target == "none" else target, cache=self.out_dir / "layer-timings.json")


def run(technique: str, prepared, options: dict, context: JobContext):
    """Run ``technique``'s main job on ``prepared``: (its result, its report writer)."""
    from .technique import get

    return get(technique, stage="optimize").function("run")(prepared, options, context)


def accuracy_change(report: dict) -> str:
    """The metric before and after on both splits, as the summary lines give it."""
    acc, name = report["accuracy"], report["metric_name"]
    final = list(acc["test"])[-1]  # sparse, perforated or finetuned
    return (f"{name} calib {100 * acc['calib']['dense']:.2f}% -> {100 * acc['calib'][final]:.2f}%, "
            f"test {100 * acc['test']['dense']:.2f}% -> {100 * acc['test'][final]:.2f}%")  # fmt: skip


@dataclass
class JobStart:
    """What every main job begins with: the data, the metric it scores with, the dense model, its
    predictions on the calibration split, and warnings about the run's meaning."""

    prepared: Any  # pipeline.Prepared
    metric: str
    dense_predictions: torch.Tensor  # on the calibration split
    warnings: list[str]
    _dense_by_split: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # other splits, as scored

    @property
    def data(self):
        return self.prepared.data

    @property
    def dense_gm(self) -> fx.GraphModule:
        return self.prepared.captured.graph_module

    @functools.cached_property
    def identity(self) -> dict:
        """The dense model (graph and weights) and the data: what a checkpoint of this job must have
        been written for, and what its plan records. The weights are hashed once per job."""
        from .plan import graph_fingerprint, weights_digest

        return {"graph": graph_fingerprint(self.dense_gm), "weights": weights_digest(self.dense_gm),
                "data": self.data.fingerprint()}  # fmt: skip

    def search_checkpoint(self, path, identity: dict, record: dict, resume: bool, world: World = SINGLE, also=()):
        """The search's checkpoint for ``identity`` (the model, data and the technique's options),
        which every rank must hold alike; without ``resume`` the main rank first removes ``path``
        and the files ``also`` names (a fine-tuning checkpoint beside it)."""
        from .search.checkpoint import Checkpoint

        world.check_same(json.dumps(identity, sort_keys=True), "models, data or options")
        if not resume and world.is_main:
            for file in (path, *also):
                if file is not None and Path(file).exists():
                    Path(file).unlink()
        return Checkpoint(path, identity, record=record, world=world)

    @property
    def crossover_images(self) -> torch.Tensor:
        """Calibration images, one batch of the model's size: what the crossover rule times on."""
        return self.data.calib.x[: self.prepared.captured.input_shape[0]]

    def score(self, model: nn.Module, split: str, name: str) -> Score:
        """``model``'s metric on ``split`` (agreement is with the dense model); ``name`` says which
        model an error is about. The dense model's predictions are made once per split (on calib,
        by ``start_job``), not again for each score."""
        images = self.data.split(split)
        target = images.y if self.metric == "top1" else self._dense_predictions(split)
        if model is self.dense_gm:
            predictions = self._dense_predictions(split)
        else:
            predictions = predict(model, images.x, name=f"{name} on the {split} split")
        return Score(self.metric, (predictions == target).sum().item() / len(images), len(images))

    def _dense_predictions(self, split: str) -> torch.Tensor:
        if split == "calib":
            return self.dense_predictions
        if split not in self._dense_by_split:
            self._dense_by_split[split] = predict(self.dense_gm, self.data.split(split).x,
                                                  name=f"the dense model on the {split} split")  # fmt: skip
        return self._dense_by_split[split]

    def holds_budget(self, model: nn.Module, epsilon: float | None, kind: str = "absolute") -> bool:
        """Whether ``model`` loses at most ``epsilon`` against the dense model on the calibration
        split (always, without an epsilon)."""
        if epsilon is None:
            return True
        from .search.accuracy_budget import within

        accuracy = self.score(model, "calib", "the transformed model").value
        return within(self._dense_calib_score.value, accuracy, epsilon, kind)

    @functools.cached_property
    def _dense_calib_score(self) -> Score:
        return self.score(self.dense_gm, "calib", "the dense model")

    def score_splits(self, models: dict[str, tuple[nn.Module, str]]) -> dict[str, dict[str, Score]]:
        """split -> kind -> score, for calib and test, of ``models`` (kind -> (model, its name))."""
        return {split: {kind: self.score(model, split, name) for kind, (model, name) in models.items()}
                for split in ("calib", "test")}  # fmt: skip

    def finetune(self, gm: fx.GraphModule, config, checkpoint, progress, scores: dict, name: str) -> dict:
        """Fine-tune ``gm`` (seeded, checkpointed), add its scores as "finetuned" to ``scores``, and
        return the log the plan and report keep (empty when ``config`` asks for no epochs)."""
        if config is None or config.epochs <= 0:
            return {}
        from .training import train

        log = train(gm, self.data, config, checkpoint=checkpoint, progress=progress)
        gm.eval()
        for split in ("calib", "test"):
            scores[split]["finetuned"] = self.score(gm, split, f"the fine-tuned {name}")
        return {"config": config.to_dict(), "seconds": log.seconds, "resumed_from": log.resumed_from,
                "epochs": [{"epoch": e.epoch, "loss": e.loss, "calib": e.calib.value} for e in log.epochs]}  # fmt: skip

    def plan(self, technique: str, config: dict, masks: dict, search: dict, results: dict):
        """The plan of this job: what was chosen, how, on which data, for which model."""
        from .plan import Plan
        from .versions import versions

        known = self.identity
        model = {"source": self.prepared.loaded.source, "graph": known["graph"], "weights": known["weights"],
                 "input_shape": list(self.prepared.captured.input_shape)}  # fmt: skip
        return Plan(technique=technique, config=config, masks=masks, search=search, model=model, results=results,
                    data={"name": self.data.name, "fingerprint": known["data"]}, versions=versions())  # fmt: skip


def calib_predictions(gm: fx.GraphModule, x: torch.Tensor, world: World = SINGLE) -> torch.Tensor:
    """The dense model's top-1 class of every calibration image, on every rank: each rank
    predicts its share. NaN or infinite outputs on any rank stop every rank with one error."""
    name = "the dense model on the calib split"
    if not world.distributed:
        return predict(gm, x, name=name)
    share = world.image_share(len(x))
    with torch.no_grad():
        out = logits(gm, x[share])
    bad, total = world.sum(torch.tensor(count_nonfinite(out), dtype=torch.int64)).tolist()
    if bad:
        raise world.shared(NonFiniteError(f"the outputs of {name} ({len(x)} images): {bad:,} of {total:,} values "
                                          "are NaN or infinite"))  # fmt: skip
    return world.gather(out.argmax(dim=1), len(x))


def start_job(prepared, metric: str, what: str, finetune=None, world: World = SINGLE) -> JobStart:
    """Check that ``prepared`` has the data ``what`` (the job, for the error) needs, settle the
    metric, and predict with the dense model (a model that predicts one class is warned of);
    with several ranks, each predicts its share of the images."""
    data = prepared.data
    if data is None:
        raise InputError(f"{what} needs data (--data)")
    metric = resolve_metric(metric, data.labeled)
    if finetune is not None and finetune.epochs > 0 and not data.labeled:
        raise InputError("fine-tuning needs labelled data; this data has none")
    dense_gm = prepared.captured.graph_module
    predictions = calib_predictions(dense_gm, data.calib.x, world)
    warning = one_class_warning(predictions, metric)
    return JobStart(prepared, metric, predictions, [warning] if warning else [])
