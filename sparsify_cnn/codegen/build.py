"""The compile pipeline: a short, named, linear list of steps from a Relax module to an
executable. ``dump_ir`` writes the module before and after every step.

On CPU, ``legalize_and_fuse`` first gives the convs channel-blocked layouts (``blocked_layout``),
and ``build`` schedules every kernel not tuned or hand-written by rule (``cpu_schedules``).
``pack_weights`` lifts the work that depends on the weights alone into a function
``main_transform_params`` that runs once, at compile time (``transform_params``): the
perforation's window starts and index tables, reshaped biases, blocked weights, and with tuning the
packed weight layouts MetaSchedule may choose for each kernel (weights are declared
layout-free before tuning). The artifact stores the weights so transformed, and its interface
does not change."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import SparsifyError, first_line
from ..progress import PhaseTimes, Progress
from .lowering import hand_scheduled


class CompileFailed(SparsifyError):
    """TVM stopped inside one of its own passes (a limitation or bug of TVM, not of the input)."""

STEPS = ("decompose_for_inference", "legalize_and_fuse", "tune", "pack_weights", "build")
TRANSFORM_PARAMS = "main_transform_params"


def _steps(target, tune_trials: int, records, progress, remote=None) -> dict[str, Callable]:
    import tvm
    from tvm import relax

    tuned = tune_trials > 0 or records is not None
    packed = {"weights": tuned and target.kind.name == "llvm"}  # decided for the module in legalize_and_fuse

    def decompose(mod):
        # from_* importers keep batch norm in training form: decompose it for inference.
        return relax.transform.CanonicalizeBindings()(relax.transform.DecomposeOpsForInference()(mod))

    def legalize_and_fuse(mod):
        with target:
            if target.kind.name == "llvm":  # convs in channel-blocked layouts (NCHW[x]c)
                from .blocked_layout import to_blocked_layout

                mod = to_blocked_layout(mod)
            mod = relax.get_pipeline("zero")(mod)
            # Hand-written kernels (the Spatial op's) have no root block, which the layout
            # rewrite passes require: a module with one keeps its weights as they are.
            packed["weights"] &= not any(hand_scheduled(func) for func in mod.functions.values())
            if packed["weights"]:  # the tuner may then pick packed weight layouts
                mod = relax.transform.AttachAttrLayoutFreeBuffers()(mod)
        return mod

    def tune(mod):
        if not tuned:
            return mod  # rule-based default schedules
        from .tuning import tune as tune_module

        return tune_module(mod, target, records or "tuning-records", tune_trials, progress=progress, remote=remote)

    def pack_weights(mod):
        if target.kind.name != "llvm":
            return mod  # a GPU's transform would need the GPU at compile time: weights stay as given
        with target:  # work on the weights alone (layouts, tables) moves into main_transform_params
            if packed["weights"]:
                mod = relax.transform.SplitLayoutRewritePreproc()(mod)
            mod = relax.transform.LiftTransformParams()(mod)
            return relax.transform.FoldConstant()(mod)

    def build(mod):
        return tvm.compile(schedule_rest(mod, target), target=target)

    return {"decompose_for_inference": decompose, "legalize_and_fuse": legalize_and_fuse, "tune": tune,
            "pack_weights": pack_weights, "build": build}  # fmt: skip


def schedule_rest(mod, target):
    """``mod`` with every kernel that tuning did not schedule scheduled by rule: on CUDA by
    dlight's (after tuning, not before), on CPU by ours (without tuning: every kernel they know)."""
    if target.kind.name == "cuda":  # GPU kernels need thread bindings
        from tvm.s_tir import dlight

        gpu = dlight.gpu
        with target:
            return dlight.ApplyDefaultSchedule(
                gpu.Matmul(), gpu.GEMV(), gpu.Reduction(), gpu.GeneralReduction(), gpu.Fallback()
            )(mod)
    from .cpu_schedules import default_cpu_schedule

    with target:
        return default_cpu_schedule()(mod)


def scheduled_kernels(mod, target_spec: dict):
    """``mod`` as ``build`` hands it to ``tvm.compile``, without tuning: every step before it run,
    every kernel scheduled (for timing kernels one by one)."""
    import tvm

    target = tvm.target.Target(target_spec)
    steps = _steps(target, 0, None, None)
    for name in STEPS[:-1]:
        mod = steps[name](mod)
    return schedule_rest(mod, target)


def compile_module(
    mod, target_spec: dict, dump_ir: str | Path | None = None, tune_trials: int = 0, records: str | Path | None = None,
    progress: Progress | None = None, remote=None, times: PhaseTimes | None = None,
):  # fmt: skip
    """Run every step on ``mod`` for ``target_spec``; return the executable. ``tune_trials``
    MetaSchedule trials (0: default schedules, or the best ones already in ``records``), their
    progress told to ``progress``, measured on ``remote`` (a ``remote.RemoteDevice``) or here.
    ``times`` adds the seconds of the steps to "compile", and tuning's to "tuning"."""
    import tvm

    target = tvm.target.Target(target_spec)
    steps = _steps(target, tune_trials, records, progress, remote)
    dump = Path(dump_ir) if dump_ir else None
    if dump:
        dump.mkdir(parents=True, exist_ok=True)
    times = times or PhaseTimes()
    for i, name in enumerate(STEPS):
        if dump:
            (dump / f"{i:02d}_{name}_before.py").write_text(mod.script())
        if name == "tune" and not (tune_trials > 0 or records is not None):
            continue  # default schedules: nothing to tune
        with times.span("tuning" if name == "tune" else "compile"):
            try:
                mod = steps[name](mod)
            except tvm.error.InternalError as error:
                raise CompileFailed(
                    f"TVM failed in the {name} step of compiling ({first_line(error)}); "
                    "`sparsify compile MODEL --dump-ir DIR` writes the IR before each step, to report it"
                ) from error
        if dump and name != "build":
            (dump / f"{i:02d}_{name}_after.py").write_text(mod.script())
    return mod


def transform_params(executable, params: list, device) -> list:
    """The weights as the executable's ``main`` takes them: packed by ``main_transform_params``
    when ``pack_weights`` made one (run once, here), else as given. Numpy arrays in and out."""
    import tvm
    from tvm import relax

    if TRANSFORM_PARAMS not in executable.as_text():
        return list(params)
    vm = relax.VirtualMachine(executable, device)
    packed = vm[TRANSFORM_PARAMS]([tvm.runtime.tensor(p, device) for p in params])
    return [packed[i].numpy() for i in range(len(packed))]
