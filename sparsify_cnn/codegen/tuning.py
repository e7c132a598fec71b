"""MetaSchedule tuning with a records directory that later compiles reuse. On CPU a kernel that a
register-tiled default rule takes is searched in that rule's space, its tile sizes sampled
(``_by_space``); a record is used only where it runs faster than the default CPU schedule
(``keep_faster``).

Two traps of TVM 0.27 on small machines are handled here: the default builder imports
``tvm.s_tir.tensor_intrin`` (about 26 s) inside its 30 s job timeout, so most builds time out
(our builder skips that import and allows longer); and tasks already in the records are not
tuned again, so re-tuning the same shapes costs nothing.

MetaSchedule prints nothing we keep while it works (its per-trial tables are turned off); a
measure callback, which it calls after every batch of trials, reports the trials done of the
budget to a progress callback (``sparsify_cnn.progress``), in phase "tuning".
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
from pathlib import Path

import tvm
import tvm_ffi
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from ..errors import MissingExtraError
from ..progress import Progress, silent

BUILD_FUNC = "sparsify.meta_schedule.build"
CHECKS = "default_schedule_checks.json"  # in the records directory: each record against the default schedule
LOGGER = "tvm.s_tir.meta_schedule"
# What MetaSchedule's search imports only once it runs (its cost model, its process pool): the
# sparsify-cnn[tune] extra, left out of plain installs for xgboost's size.
SEARCH_PACKAGES = ("xgboost", "psutil", "cloudpickle")


@tvm.register_global_func(BUILD_FUNC, override=True)
def _build(mod, target, _params):
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def _worker_init() -> None:
    import sparsify_cnn.codegen.tuning  # noqa: F401 - registers BUILD_FUNC in the worker


def tune(mod, target, records: str | Path, trials: int, seed: int = 0, progress: Progress | None = None,
         remote=None):  # fmt: skip
    """Tune the fused PrimFuncs of ``mod`` for at most ``trials`` trials in all (tasks already in
    ``records`` are skipped) and return ``mod`` with the best schedules applied; ``progress``
    hears of every batch of trials measured. ``remote`` (a ``remote.RemoteDevice``): trials and
    the check against the default schedule are measured on its servers, not here."""
    if trials > 0:
        require_search_packages()
    if remote is not None:
        remote.check()
    records = Path(records)
    records.mkdir(parents=True, exist_ok=True)
    mod = without_unknown_rules(mod, target)
    database = ms.database.JSONDatabase(
        path_workload=str(records / "database_workload.json"),
        path_tuning_record=str(records / "database_tuning_record.json"),
    )
    tasks = [
        task
        for task in ms.relax_integration.extract_tasks(mod, target)
        if not _scheduled(task) and not _copy(task) and not _tuned(database, task)
    ]
    gpu = target.kind.name == "cuda"
    if tasks and trials > 0:
        # The default population (2048 schedules mutated per round) dwarfs a small budget. On a
        # GPU few random schedules of a wide conv on a small map fit in shared memory: sample
        # longer before giving up on the initial population.
        strategy = ms.search_strategy.EvolutionarySearch(
            population_size=min(2048, max(64, 16 * trials)), max_fail_count=60 if gpu else 5
        )
        progress = progress or silent
        # Making the search spaces took 45-100 s on a 2-core machine (the first one imports
        # tvm.s_tir.tensor_intrin, 26 s alone): a phase of its own, kept out of the trials' rate.
        setup = f"search spaces of {len(tasks)} tasks"
        progress("tuning setup", setup, 0, 1, eta=False)
        with _unnamed_handlers_detached(logging.getLogger(LOGGER)):
            contexts, weights = [], []
            for space, group in _by_space(tasks, target):
                # no per-trial tables: each call sets MetaSchedule's console to the level it finds
                logging.getLogger(LOGGER).setLevel(logging.WARNING)
                made = ms.relax_integration.extracted_tasks_to_tune_contexts(
                    group, str(records), space=space, strategy=strategy, seed=seed
                )
                contexts, weights = contexts + made[0], weights + made[1]
        progress("tuning setup", setup, 1, 1, eta=False)
        counter = TrialCounter(progress, [context.task_name for context in contexts], trials)
        ms.tune.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=str(records),
            max_trials_global=trials,
            max_trials_per_task=max(1, trials // len(contexts)),
            num_trials_per_iter=min(64, max(2, trials // len(contexts))),
            builder=ms.builder.LocalBuilder(f_build=BUILD_FUNC, initializer=_worker_init, timeout_sec=120.0),
            # A GPU kernel runs in microseconds: the default 100 ms minimum per measurement
            # would cost more than the rest of a trial.
            runner=_runner(ms.runner.EvaluatorConfig(number=10, repeat=1, min_repeat_ms=0) if gpu else None, remote),
            database=database,
            measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), _Measured(counter)],
        )
        counter.finish()
    with target, database:
        tuned = tvm.relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    if target.kind.name != "llvm":
        return tuned
    checks = records / CHECKS
    verdicts = json.loads(checks.read_text()) if checks.exists() else {}
    seconds = remote.kernel_seconds if remote is not None else None
    slower = keep_faster(mod, tuned, target, seconds=seconds, verdicts=verdicts)
    checks.write_text(json.dumps(verdicts, indent=1, sort_keys=True))
    if slower:
        (progress or silent)("tuning check", f"{len(slower)} kernels faster with the default schedule: "
                             f"{', '.join(sorted(slower))}", 1, 1, eta=False)  # fmt: skip
    return _with_originals(tuned, mod, slower)


def _by_space(tasks, target) -> list:
    """(design space, tasks) pairs: on CPU, the kernels a register-tiled default rule takes are
    searched in that rule's space, its tile sizes sampled from the rule's own choice
    (``cpu_schedules.tunable_space``); the others, and every GPU kernel, in MetaSchedule's
    generic one (multi-level tiling)."""
    if target.kind.name != "llvm":
        return [("post-order-apply", tasks)]
    from tvm import s_tir

    from .cpu_schedules import tunable_space

    space = tunable_space(target)
    ruled = [task for task in tasks if space(s_tir.Schedule(task.dispatched[0]))]
    others = [task for task in tasks if task not in ruled]
    rules = ms.space_generator.ScheduleFn(space, sch_rules=[], postprocs=[],
                                          mutator_probs={ms.mutator.MutateTileSize(): 1.0})  # fmt: skip
    return [(space_, group) for space_, group in ((rules, ruled), ("post-order-apply", others)) if group]


def keep_faster(original, tuned, target, seconds=None, verdicts: dict | None = None) -> set[str]:
    """The kernels of ``tuned`` (tuning records applied to ``original``) that the default CPU
    schedule runs faster than their record: a small budget's best record can be a random
    schedule slower than the rule's. Each kernel compiled alone both ways and timed on the same
    random inputs by ``seconds(prim_func, target)`` (default ``kernel_seconds``). ``verdicts``
    keeps each comparison (by the structural hashes of both kernels): a later compile with the
    same records decides the same, at no cost."""
    from .cpu_schedules import default_cpu_schedule
    from .lowering import hand_scheduled

    seconds = seconds or kernel_seconds
    verdicts = {} if verdicts is None else verdicts
    slower = set()
    for gvar, func in tuned.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or not hand_scheduled(func) or gvar not in original:
            continue
        before = original[gvar]
        if hand_scheduled(before):
            continue  # written with its schedule (the Spatial op's), not tuned
        key = f"{tvm_ffi.structural_hash(before)}:{tvm_ffi.structural_hash(func)}"
        if key not in verdicts:
            with target:
                default = default_cpu_schedule()(tvm.IRModule({"main": before}))["main"]
            try:
                verdicts[key] = "default" if seconds(default, target) < seconds(func, target) else "record"
            except Exception:  # noqa: BLE001 - a kernel that cannot run alone: the record stays, untimed
                continue
        if verdicts[key] == "default":
            slower.add(gvar.name_hint)
    return slower


def kernel_seconds(func, target, number: int = 3, repeat: int = 5) -> float:
    """Best of ``repeat`` timings (each the mean of ``number`` runs) of one PrimFunc compiled
    alone on random inputs (integer inputs zero: index tables stay in range); weights in the
    layout its schedule asked for."""
    alone = kernel_alone(func)
    kernel = tvm.compile(alone, target=target).jit()
    args = [tvm.runtime.tensor(values) for values in kernel_arguments(alone)]
    timer = kernel.time_evaluator("main", tvm.cpu(), number=number, repeat=repeat)
    return min(timer(*args).results)


def kernel_alone(func):
    """A module of one PrimFunc, as ``main``, weights in the layout its schedule asked for."""
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    entry = func.with_attr("global_symbol", "main")
    return RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(tvm.IRModule({"main": entry}))


def kernel_arguments(alone) -> list:
    """Random inputs (numpy, seeded) for ``kernel_alone``'s ``main``; integer ones zero, so that
    index tables stay in range."""
    import numpy as np

    rng = np.random.default_rng(0)
    args = []
    for param in alone["main"].params:
        shape, dtype = [int(d) for d in param.shape], str(param.dtype)
        args.append(np.zeros(shape, dtype) if "int" in dtype else rng.standard_normal(shape).astype(dtype))
    return args


def _runner(evaluator_config, remote):
    """Where trials are measured: here, or on ``remote``'s servers."""
    if remote is not None:
        return remote.runner(evaluator_config)
    return ms.runner.LocalRunner(evaluator_config=evaluator_config)


def _with_originals(tuned, original, names: set[str]):
    """A copy of ``tuned`` with the kernels ``names`` as they were before tuning (scheduled by
    rule at build)."""
    result = tuned.clone()
    for gvar in list(result.functions):
        if gvar.name_hint in names:
            result.update_func(gvar, original[gvar])
    return result


class TrialCounter:
    """Turns MetaSchedule's measured batches into progress: trials done of the budget (at most:
    tasks whose search space runs out stop early), the task just measured, its best time."""

    def __init__(self, progress: Progress, task_names: list[str], budget: int):
        self.progress, self.names, self.budget = progress, task_names, budget
        self.done = 0
        self.best: dict[int, float] = {}  # task -> fastest run in seconds
        self._report(f"{len(task_names)} tasks", {})  # the phase starts as the search does

    def measured(self, task_id: int, trials: int, run_seconds: list[float]) -> None:
        """``trials`` candidates of task ``task_id`` were measured; ``run_seconds``: the runs that worked."""
        self.done += trials
        if run_seconds:
            self.best[task_id] = min(self.best.get(task_id, float("inf")), *run_seconds)
        best = {"best_ms": 1e3 * self.best[task_id]} if task_id in self.best else {}
        self._report(f"task {task_id + 1} of {len(self.names)} ({self.names[task_id]})", best)

    def finish(self) -> None:
        self._report(f"{len(self.best)} of {len(self.names)} tasks have a measured schedule", {"end": True})

    def _report(self, item: str, extra: dict) -> None:
        self.progress("tuning", item, self.done, self.budget, unit="trials", at_most=True, **extra)


@derived_object
class _Measured(ms.measure_callback.PyMeasureCallback):
    """MetaSchedule's side of ``TrialCounter``: called after every batch of trials it measures."""

    def __init__(self, counter: TrialCounter):
        super().__init__()
        self.counter = counter

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        seconds = [min(float(s) for s in r.run_secs) for r in runner_results if r.error_msg is None and r.run_secs]
        self.counter.measured(int(task_id), len(runner_results), seconds)  # one result per candidate


def require_search_packages() -> None:
    """Fail in one line, naming the extra, where MetaSchedule's search could not start; checked
    before tuning, not mid-search where the import would fail."""
    missing = [name for name in SEARCH_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(
            f"tuning (--tune-trials) needs packages not installed here ({', '.join(missing)}): "
            "pip install 'sparsify-cnn[tune]'"
        )


@contextlib.contextmanager
def _unnamed_handlers_detached(logger: logging.Logger):
    """MetaSchedule's logging setup refers to every handler of its logger by name and fails on
    one without a name (a user's, or pytest's capture handler once a session has run): such
    handlers are detached while it runs and attached again after."""
    unnamed = [handler for handler in logger.handlers if handler.get_name() is None]
    for handler in unnamed:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in unnamed:
            logger.addHandler(handler)


def without_unknown_rules(mod, target):
    """``mod`` without the ``schedule_rule`` annotations that no function implements for
    ``target`` (TOPI's pools ask for ``meta_schedule.pool_max``, which some GPU targets have).
    MetaSchedule drops such an annotation itself and schedules the block by its other rules, but
    logs a warning for every one, each time it makes a search space: the schedules are the same."""
    from tvm import s_tir

    from .lowering import hand_scheduled

    def implemented(rule: str) -> bool:
        return rule == "None" or any(
            tvm.get_global_func(f"meta_schedule.{key}.{rule}", allow_missing=True) for key in target.keys
        )

    for var, func in list(mod.functions.items()):
        if not isinstance(func, tvm.tirx.PrimFunc) or hand_scheduled(func):
            continue
        sch = s_tir.Schedule(func)
        unknown = [block for block in sch.get_child_blocks(sch.get_sblock("root"))
                   if "schedule_rule" in sch.get(block).annotations
                   and not implemented(str(sch.get(block).annotations["schedule_rule"]))]  # fmt: skip
        for block in unknown:
            sch.unannotate(block, "schedule_rule")
        if unknown:
            mod = tvm.IRModule({**dict(mod.functions.items()), var: sch.mod["main"]}, attrs=mod.attrs,
                               global_infos=mod.global_infos)  # fmt: skip
    return mod


def _scheduled(task) -> bool:
    """A kernel written with its schedule (``tirx.is_scheduled``): nothing to tune."""
    from .lowering import hand_scheduled

    return any(hand_scheduled(func) for func in task.mod.functions.values())


def _copy(task) -> bool:
    """A layout transform (into or out of the channel-blocked layout, or of weights, which runs
    once at compile time): a copy the default schedule does well, not worth trials."""
    return "layout_transform" in task.task_name


def _tuned(database, task) -> bool:
    module = task.dispatched[0]
    if not database.has_workload(module):
        return False
    return bool(database.get_top_k(database.commit_workload(module), 1))
