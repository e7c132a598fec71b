"""The compile pipeline: a short, named, linear list of steps from a Relax module to an
executable. ``dump_ir`` writes the module before and after every step."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

STEPS = ("decompose_for_inference", "legalize_and_fuse", "tune", "build")


def _steps(target, tune_trials: int, records) -> dict[str, Callable]:
    import tvm
    from tvm import relax

    def decompose(mod):
        # from_* importers keep batch norm in training form: decompose it for inference.
        return relax.transform.CanonicalizeBindings()(relax.transform.DecomposeOpsForInference()(mod))

    def legalize_and_fuse(mod):
        with target:
            mod = relax.get_pipeline("zero")(mod)
            if target.kind.name == "cuda":  # GPU kernels need thread bindings to build at all
                from tvm.s_tir import dlight

                gpu = dlight.gpu
                mod = dlight.ApplyDefaultSchedule(
                    gpu.Matmul(), gpu.GEMV(), gpu.Reduction(), gpu.GeneralReduction(), gpu.Fallback()
                )(mod)
        return mod

    def tune(mod):
        if tune_trials <= 0 and records is None:
            return mod  # rule-based default schedules
        from .tuning import tune as tune_module

        return tune_module(mod, target, records or "tuning-records", tune_trials)

    def build(mod):
        return tvm.compile(mod, target=target)

    return {"decompose_for_inference": decompose, "legalize_and_fuse": legalize_and_fuse, "tune": tune, "build": build}


def compile_module(
    mod, target_spec: dict, dump_ir: str | Path | None = None, tune_trials: int = 0, records: str | Path | None = None
):
    """Run every step on ``mod`` for ``target_spec``; return the executable. ``tune_trials``
    MetaSchedule trials (0: default schedules, or the best ones already in ``records``)."""
    import tvm

    target = tvm.target.Target(target_spec)
    steps = _steps(target, tune_trials, records)
    dump = Path(dump_ir) if dump_ir else None
    if dump:
        dump.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(STEPS):
        if dump:
            (dump / f"{i:02d}_{name}_before.py").write_text(mod.script())
        mod = steps[name](mod)
        if dump and name != "build":
            (dump / f"{i:02d}_{name}_after.py").write_text(mod.script())
    return mod
