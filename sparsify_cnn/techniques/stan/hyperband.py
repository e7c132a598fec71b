"""Hyperband (optuna's ``HyperbandPruner``) over the seed's search spaces (seed 000 Tables 1-6),
shipped as presets. As in the seed, the batch size is fixed at 100 and the seed is fixed; the
resource is epochs, each trial trains a fresh zoo model and reports its calibration error after
every epoch. Trials live in an optuna SQLite file: an interrupted study resumes, a trial that
was running when it was interrupted is run again, and the points drawn and trials pruned are
those of a study that was never interrupted (``replay.py``).

Decisions where the seed is silent: the search ranges are the seed's, even where they diverge
(a learning rate or momentum up to 5: such trials stop at their first non-finite loss and score
the worst error, 1, since the setup cannot be trained to the end); parameters
not searched keep Caffe's solver values (momentum 0.9; weight decay 5e-4 for LeNet's
classifier, else 0); the MLP and ResNet-18 use Adam at lr 1e-3 (meProp trained its MLP with
Adam; the seed says Adam for ResNet-18); the ResNet "dropout" is a dropout before ``fc``.
"""

from __future__ import annotations

import inspect
import json
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ... import models
from ...data import Dataset
from ...errors import InputError, TrainingDiverged
from ...progress import Progress, silent
from ...transform.capture import capture
from ...transform.layers import find_layers
from .trainer import EpochRecord, TrainSetup, fit

BATCH_SIZE = 100
SHARED_SCHEMES = ("sqlite", "postgresql", "mysql")  # database URLs several workers can share
HEARTBEAT_SECONDS, GRACE_SECONDS = 30, 120  # a shared study's running trial with no heartbeat this long: failed
CONFIG_FORMAT = "sparsify-train-config"


@dataclass(frozen=True)
class Param:
    """One searched hyper-parameter: ``target`` says what it sets (see ``_apply``)."""

    target: str
    scale: str  # "log" or "linear"
    low: float
    high: float
    integer: bool = False


@dataclass(frozen=True)
class Preset:
    name: str
    source: str
    params: tuple[Param, ...]
    optimizer: str = "sgd"
    lr: float = 0.01  # when not searched
    momentum: float = 0.9  # when not searched
    weight_decay: float = 0.0  # parameters without a searched L2 penalty
    seed_iterations: str = ""


def _log(target: str, low: float = 5e-5, high: float = 5.0) -> Param:
    return Param(target, "log", low, high)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("lenet", "seed 000 Table 1 (LeNet)",
               (_log("lr"), _log("conv1_l2"), _log("conv2_l2"), _log("momentum", 0.001, 0.99)),
               weight_decay=5e-4, seed_iterations="10000 iterations"),
        Preset("cq", "seed 000 Table 2 (CQ)", (_log("lr"), _log("conv_l2"), _log("fc1_l2"), _log("fc2_l2")),
               seed_iterations="4000 iterations"),
        Preset("alexlrn", "seed 000 Table 3 (AlexLRN)",
               (_log("lr"), _log("conv_l2"), _log("fc1_l2"), _log("lrn_scale", 5e-6, 5.0),
                Param("lrn_power", "linear", 0.01, 3.0)), seed_iterations="60000 iterations"),
        Preset("alexbn", "seed 000 Table 4 (AlexBN)", (_log("lr"), _log("momentum"), _log("conv_l2"), _log("fc1_l2")),
               seed_iterations="60000 iterations"),
        Preset("mlp", "seed 000 Table 5 (MLP with meProp top-k)",
               (Param("hidden", "linear", 100, 8192, True), Param("dropout", "linear", 0.0, 0.999),
                Param("top_k", "linear", 0, 100, True)), optimizer="adam", lr=1e-3, seed_iterations="20 epochs"),
        Preset("resnet18", "seed 000 Table 6 (ResNet-18 with Adam)",
               (_log("conv_l2"), Param("classifier_dropout", "linear", 0.0, 0.999)), optimizer="adam", lr=1e-3,
               seed_iterations="30000 iterations"),
    ]
}  # fmt: skip


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise InputError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def setup_for(preset: Preset, values: dict, layers: dict[str, list[str]], epochs: int, seed: int) -> TrainSetup:
    """The training setup a trial's ``values`` stand for, on a model with these conv and
    linear ``layers`` ({"conv": [...], "linear": [...]}, in graph order)."""
    settings = {"epochs": epochs, "batch_size": BATCH_SIZE, "lr": preset.lr, "momentum": preset.momentum,
                "weight_decay": preset.weight_decay, "seed": seed, "optimizer": preset.optimizer}  # fmt: skip
    decay, options, lrn = {}, {}, {}
    for target, value in values.items():
        if target in ("lr", "momentum", "classifier_dropout"):
            settings[target] = value
        elif target == "top_k":
            settings["meprop_k"] = int(value)
        elif target in ("hidden", "dropout"):
            options[target] = int(value) if target == "hidden" else value
        elif target in ("lrn_scale", "lrn_power"):
            lrn["alpha" if target == "lrn_scale" else "beta"] = value
        elif target.endswith("_l2"):
            for name in _layer_names(target[: -len("_l2")], layers, preset):
                decay[name] = value
        else:
            raise InputError(f"preset '{preset.name}' searches '{target}', which nothing sets")
    return TrainSetup(**settings, layer_weight_decay=decay, model_options=options, lrn=lrn)


def _layer_names(role: str, layers: dict[str, list[str]], preset: Preset) -> list[str]:
    if role == "conv":
        names = layers["conv"]
    else:
        kind, index = ("conv", role[4:]) if role.startswith("conv") else ("linear", role[2:])
        found = layers[kind]
        if int(index) > len(found):
            raise InputError(
                f"preset '{preset.name}' sets an L2 penalty for {role}, but the model has {len(found)} {kind} "
                f"layer(s) ({', '.join(found) or 'none'})"
            )
        names = [found[int(index) - 1]]
    if not names:
        raise InputError(f"preset '{preset.name}' sets an L2 penalty for {role} layers; the model has none")
    return names


def build_zoo(name: str, image_shape: tuple[int, int, int], num_classes: int, options: dict | None = None):
    """A fresh zoo model for images of ``image_shape`` (C, H, W) and ``num_classes``, captured."""
    entry = models.get_entry(name)
    options = dict(options or {})
    if entry.sized and tuple(image_shape[1:]) != entry.input_shape[1:]:
        options["input_size"] = tuple(image_shape[1:])
    try:
        module = models.build(name, num_classes=num_classes, in_channels=image_shape[0], **options)
    except TypeError as error:
        raise InputError(f"zoo model '{name}' does not take the options {', '.join(options)}: {error}") from None
    return capture(module, (1, *image_shape)).graph_module


@dataclass(frozen=True)
class StudyConfig:
    """A Hyperband study: ``trials`` trials in all (a resumed study runs the rest), each at most
    ``max_epochs`` epochs, brackets from ``min_epochs`` with ``reduction_factor``."""

    preset: str
    storage: str
    trials: int = 30
    max_epochs: int = 8
    min_epochs: int = 1
    reduction_factor: int = 3
    seed: int = 0
    study_name: str | None = None

    def __post_init__(self):
        get_preset(self.preset)
        if self.trials < 1:
            raise InputError(f"trials must be >= 1, got {self.trials}")
        if not 1 <= self.min_epochs <= self.max_epochs:
            raise InputError(f"need 1 <= min epochs <= max epochs, got {self.min_epochs} and {self.max_epochs}")
        if self.reduction_factor < 2:
            raise InputError(f"the reduction factor must be >= 2, got {self.reduction_factor}")


@dataclass
class StudyResult:
    best_setup: TrainSetup
    best_error: float
    best_trial: int
    values: dict
    counts: dict[str, int] = field(default_factory=dict)
    resumed: int = 0  # trials found in the storage when the study started
    rerun: list[int] = field(default_factory=list)  # interrupted trials queued again


def run_study(
    model: str,
    data: Dataset,
    config: StudyConfig,
    on_trial: Callable[[object], None] | None = None,
    on_epoch: Callable[[int, EpochRecord], None] | None = None,
    progress: Progress | None = None,
) -> StudyResult:
    """Run (or resume) a Hyperband study for the zoo ``model`` on ``data``; the best setup trains
    for ``max_epochs``. ``progress`` (``sparsify_cnn.progress``) hears of the study in phase
    "hyperband" (trials finished of the study's) and of each trial's training steps in phase
    "trial N", which a pruned trial ends early. Example::

        result = run_study("cq", load_data("digits", (3, 32, 32)), StudyConfig("cq", "cq.db", trials=20))
        result.best_setup.to_dict()
    """
    import optuna
    from optuna.trial import TrialState

    from .replay import SLOT, SlotHyperbandPruner, SlotSampler, slot_of

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    progress = progress or silent
    preset = get_preset(config.preset)
    name = models.get_entry(model).name
    if not data.labeled:
        raise InputError(f"data '{data.name}' has no labels: tuning needs labelled data")
    image_shape = data.input_shape
    probe = build_zoo(name, image_shape, data.num_classes)
    layers = {kind: [layer.name for layer in find_layers(probe) if layer.kind == kind] for kind in ("conv", "linear")}
    identity = {
        "model": name,
        "preset": preset.name,
        "data": data.fingerprint(),
        "max_epochs": config.max_epochs,
        "min_epochs": config.min_epochs,
        "reduction_factor": config.reduction_factor,
        "seed": config.seed,
    }
    storage = open_storage(config.storage)
    study_name = config.study_name or f"{name}-{preset.name}-{data.name}"
    # Points and brackets follow a trial's slot (see replay.py): a study killed and resumed
    # draws and prunes as one that was never interrupted.
    pruner = SlotHyperbandPruner(config.min_epochs, config.max_epochs, config.reduction_factor)
    study = optuna.create_study(storage=storage, study_name=study_name, direction="minimize", pruner=pruner,
                                sampler=SlotSampler(config.seed), load_if_exists=True)  # fmt: skip
    stored = study.user_attrs.get("identity")
    if stored is None:
        study.set_user_attr("identity", identity)
    elif stored != identity:
        changed = ", ".join(k for k in identity if stored.get(k) != identity[k])
        raise InputError(
            f"study '{study_name}' in {config.storage} was made with another {changed}; "
            "use another --storage or --study name"
        )
    trials = study.get_trials(deepcopy=False)
    rerun = _requeue_interrupted(study, trials, running_too=not is_shared(config.storage))

    def objective(trial) -> float:
        trial.set_user_attr(SLOT, slot_of(study.get_trials(deepcopy=False), trial))
        values = {}
        for p in preset.params:
            if p.integer:
                values[p.target] = trial.suggest_int(p.target, int(p.low), int(p.high), log=p.scale == "log")
            else:
                values[p.target] = trial.suggest_float(p.target, p.low, p.high, log=p.scale == "log")
        setup = setup_for(preset, values, layers, config.max_epochs, config.seed)
        torch.manual_seed(config.seed)
        gm = build_zoo(name, image_shape, data.num_classes, setup.model_options)

        def report(record: EpochRecord) -> None:
            error = 1.0 - record.calib.value
            trial.report(error, record.epoch)
            if on_epoch is not None:
                on_epoch(trial.number, record)
            if trial.should_prune():
                raise optuna.TrialPruned()

        steps = _TrialSteps(progress, f"trial {trial.number}")
        try:
            result = fit(gm, data, setup, on_epoch=report, progress=steps)
        except optuna.TrialPruned:
            steps.end("pruned")
            raise
        except TrainingDiverged as stop:
            steps.end("diverged")  # its last finite epoch's error would flatter a setup that fails
            trial.set_user_attr("diverged_at", stop.epoch)
            return 1.0
        return 1.0 - result.epochs[-1].calib.value if result.epochs else 1.0

    def finished_trials() -> int:
        return sum(t.state.is_finished() and t.state.name != "FAIL" for t in study.get_trials(deepcopy=False))

    def told(study, trial) -> None:
        if on_trial is not None:
            on_trial(trial)
        done = min(finished_trials(), config.trials)
        progress("hyperband", f"trial {trial.number} {trial.state.name.lower()}", done, config.trials, unit="trials")

    done = finished_trials()
    remaining = config.trials - done
    # Several workers on one storage: each stops once the study as a whole has its trials.
    callbacks = [optuna.study.MaxTrialsCallback(config.trials, states=(TrialState.COMPLETE, TrialState.PRUNED)), told]
    if remaining > 0:
        progress("hyperband", f"{done} trials done", done, config.trials, unit="trials")
        study.optimize(objective, n_trials=remaining, callbacks=callbacks)
    finished = study.get_trials(deepcopy=False)
    complete = [t for t in finished if t.state.name == "COMPLETE"]
    if not complete:
        raise InputError(f"no trial of study '{study_name}' completed yet; run more trials (--trials)")
    best = min(complete, key=lambda t: (t.value, t.number))
    counts = {}
    for t in finished:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return StudyResult(
        best_setup=setup_for(preset, dict(best.params), layers, config.max_epochs, config.seed),
        best_error=best.value,
        best_trial=best.number,
        values=dict(best.params),
        counts=counts,
        resumed=len(trials),
        rerun=rerun,
    )


class _TrialSteps:
    """A trial's training steps, told in the trial's own phase; a trial stopped early (pruned or
    diverged) ends its phase with why."""

    def __init__(self, progress: Progress, phase: str):
        self.progress, self.phase, self.last = progress, phase, None

    def __call__(self, phase: str, item: str, done: int, total: int | None, **extra) -> None:
        self.last = (done, total, extra.get("unit"))
        self.progress(self.phase, item, done, total, **extra)

    def end(self, why: str) -> None:
        if self.last is not None:
            done, total, unit = self.last
            self.progress(self.phase, why, done, total, unit=unit, end=True)


def is_shared(storage: str) -> bool:
    """A database URL (``sqlite:///study.db``, ``postgresql://host/db``) is a storage several
    workers share; a plain path is one process's SQLite file."""
    return "://" in storage


def shown(storage: str) -> str:
    """``storage`` as messages and files show it: a URL's password hidden."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", storage)


def open_storage(path: str):
    """The optuna storage ``path`` names. A shared one (a URL) keeps a heartbeat per running
    trial: a trial whose worker died is failed after ``GRACE_SECONDS`` and queued again."""
    import optuna

    if is_shared(path):
        scheme = path.split("://", 1)[0].split("+", 1)[0]
        if scheme not in SHARED_SCHEMES:
            raise InputError(f"study storage '{shown(path)}': use a database URL ({', '.join(SHARED_SCHEMES)}) or a file path")
        # SQLite serialises writers: a worker waits for another's write instead of failing at once.
        engine = {"connect_args": {"timeout": 60}} if scheme == "sqlite" else None
        # optuna 4.9 renamed the callback; heartbeats are "experimental" there (a warning each run).
        renamed = "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
        stale = {"heartbeat_stale_trial_callback" if renamed else "failed_trial_callback": _retry_stale}
        for attempt in range(3):
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning, message=".*heartbeat")
                    return optuna.storages.RDBStorage(path, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS,
                                                      grace_period=GRACE_SECONDS, **stale)  # fmt: skip
            except Exception as error:  # noqa: BLE001 - a driver's error: one line, no password
                # Workers started together: another made the tables, or stamped their version.
                racing = "already exists" in str(error) or "UNIQUE constraint failed: alembic_version" in str(error)
                if racing and attempt < 2:
                    time.sleep(1.0)
                    continue
                first = shown(str(error).strip().splitlines()[0]) if str(error).strip() else type(error).__name__
                raise InputError(f"cannot open the study storage '{shown(path)}': {first}") from None
    file = Path(path)
    if file.parent and not file.parent.exists():
        raise InputError(f"the folder of the study storage '{path}' does not exist")
    try:
        return optuna.storages.RDBStorage(f"sqlite:///{file.resolve()}")
    except Exception as error:
        raise InputError(f"'{path}' is not an optuna SQLite study storage ({type(error).__name__})") from error


def _retry_stale(study, trial) -> None:
    """optuna's callback for a trial whose heartbeat stopped (its worker died): queued again,
    in its slot."""
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def _requeue_interrupted(study, trials, running_too: bool = True) -> list[int]:
    """Trials failed (Ctrl-C) and, with ``running_too``, trials left running (the one process
    was killed) are marked failed and queued again with the same values, once each. On a shared
    storage a running trial may be another worker's: its heartbeat decides instead."""
    from optuna.trial import TrialState

    retried = {t.user_attrs.get("retry_of") for t in trials}
    rerun = []
    for t in trials:
        if t.state == TrialState.RUNNING and running_too:
            study.tell(t.number, state=TrialState.FAIL)
        elif t.state != TrialState.FAIL:
            continue
        if t.number not in retried:  # even one killed before its first parameter: it holds a slot
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            rerun.append(t.number)
    return rerun


def write_config(path: str | Path, model: str, result: StudyResult, config: StudyConfig, data: Dataset) -> dict:
    """Save the best setup as a file ``sparsify train --config`` reads."""
    document = {
        "format": CONFIG_FORMAT,
        "version": 1,
        "model": f"{models.PREFIX}{models.get_entry(model).name}",
        "setup": result.best_setup.to_dict(),
        "tuned": {
            "preset": config.preset,
            "source": get_preset(config.preset).source,
            "calib_error": result.best_error,
            "trial": result.best_trial,
            "values": result.values,
            "trials": result.counts,
            "storage": shown(str(config.storage)),
            "data": data.name,
            "data_fingerprint": data.fingerprint(),
        },
    }
    from ...storage import write_text

    write_text(path, json.dumps(document, indent=2) + "\n")
    return document


def read_config(path: str | Path) -> TrainSetup:
    """The training setup of a config file (what ``write_config`` writes, or its ``setup`` alone)."""
    try:
        if not Path(path).is_file():  # a fifo or device would block the read, or never end
            exists = Path(path).exists()
            raise InputError(f"cannot read config '{path}': {'not a regular file' if exists else 'no such file'}")
        document = json.loads(Path(path).read_text())
    except OSError as error:
        raise InputError(f"cannot read config '{path}': {error.strerror or error}") from None
    except ValueError as error:
        raise InputError(f"config '{path}' is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise InputError(f"config '{path}' must hold a JSON object")
    setup = document.get("setup", document) if document.get("format", CONFIG_FORMAT) == CONFIG_FORMAT else None
    if not isinstance(setup, dict):
        raise InputError(f"config '{path}' is not a {CONFIG_FORMAT} file")
    try:
        return TrainSetup.from_dict(setup)
    except TypeError as error:
        raise InputError(f"config '{path}' has bad settings: {error}") from None
