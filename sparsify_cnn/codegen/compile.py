"""Compile a captured (and possibly rewritten) graph into an artifact, and check the compiled
model against the torch model on real inputs before anything is written."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import fx

from ..errors import SparsifyError, check_finite
from ..ops.registry import custom_convert_map
from ..progress import PhaseTimes, Progress, silent
from ..transform.layers import output_shape
from ..versions import versions
from .artifact import check_replaceable, cpu_features, cuda_source, write_artifact
from .build import compile_module, transform_params
from .exporting import export_static
from .importer import import_program
from .target import target_spec

TOLERANCE = 1e-4  # largest difference allowed, relative to the output's scale
NUDGE = 1e-6  # of the input's scale: above the rounding a thread count changes (see OutputComparison)
MAX_THRESHOLD_SHARE = 0.1  # of the checked images, the most that may be left out as on a threshold
STEPS = ("export", "import", "build", "check", "write")  # what progress reports, in phase "compile"


class CompiledMismatchError(SparsifyError):
    """The compiled model does not compute what the torch model computes."""


@dataclass
class CompileResult:
    out: Path
    manifest: dict
    max_abs_diff: float | None  # None when the target cannot run here (CUDA without a GPU)
    relative_diff: float | None
    manifest_sha256: str = ""  # pins the artifact: runtime.load(out, expected_sha256=...)
    threshold_images: int = 0  # check images left out: a zero prediction at its threshold (OutputComparison)

    @property
    def threshold_note(self) -> str:
        """What the check left out, for the line that gives its difference ('' if nothing)."""
        n = self.threshold_images
        return f"; {n} image{'s' * (n != 1)} at a zero-prediction threshold left out" if n else ""


def compile_graph(
    gm: fx.GraphModule,
    input_shape: tuple[int, ...],
    out: str | Path,
    target: str = "llvm",
    check_inputs: torch.Tensor | None = None,
    plan: dict | None = None,
    dump_ir: str | Path | None = None,
    tune_trials: int = 0,
    records: str | Path | None = None,
    progress: Progress | None = None,
    extra_files: Mapping[str, Path] | None = None,
    remote=None,
    times: PhaseTimes | None = None,
) -> CompileResult:
    """Compile ``gm`` for inputs of ``input_shape``, check it on ``check_inputs`` (images; run
    in batches of the compiled batch size) and write the artifact to ``out``. ``tune_trials``
    MetaSchedule trials, with records kept in (and reused from) ``records``, measured on
    ``remote`` (a ``remote.RemoteDevice``: the deployment machines) or here. ``progress`` hears
    of each step (``STEPS``) and of tuning. ``extra_files`` (name -> file) are copied into the
    artifact and listed in its manifest (a loader refuses files it does not list). ``times`` adds
    the seconds it takes to "compile", and tuning's to "tuning"."""
    progress, times = progress or silent, times or PhaseTimes()
    spec = target_spec(target)
    check_replaceable(Path(out))  # before hours of tuning, not after
    _step(progress, "export")
    with times.span("compile"):
        program = export_static(gm, tuple(input_shape))
    import tvm

    _step(progress, "import")
    with times.span("compile"), tvm.target.Target(spec):  # lowerings pick CPU or GPU kernels by the target
        mod, params = import_program(program, custom_convert_map())
    _step(progress, "build")
    executable = compile_module(mod, spec, dump_ir, tune_trials, records, progress, remote, times)
    params = transform_params(executable, params, tvm.cpu())  # packed once, stored packed
    _step(progress, "check")
    max_diff = relative = None
    threshold_images = 0
    if spec["kind"] == "llvm" and check_inputs is not None and len(check_inputs):
        with times.span("compile"):
            max_diff, relative, threshold_images = _check(executable, params, gm, tuple(input_shape), check_inputs)
        if relative > TOLERANCE:
            raise CompiledMismatchError(
                f"the compiled model differs from the torch model by {max_diff:.3g} "
                f"({relative:.3g} of the output scale; tolerance {TOLERANCE})"
            )
    nvcc = _nvcc_compile(executable, spec) if spec["kind"] == "cuda" else None
    out_shape = list(output_shape(program.graph_module))  # recorded by the export: no forward pass
    manifest = {
        "inputs": [{"name": "input", "shape": list(input_shape), "dtype": "float32"}],
        "outputs": [{"name": "output", "shape": out_shape, "dtype": "float32"}],
        "target": spec,
        "cpu_features": cpu_features(spec) if spec["kind"] == "llvm" else [],
        "versions": versions(),
        "plan": plan,
        "tuning": {"trials": tune_trials, "records": str(records) if records else None,
                   "measured_on": str(remote) if remote is not None and tune_trials else None},
        "check": {"max_abs_diff": max_diff, "relative_diff": relative, "tolerance": TOLERANCE,
                  "images": 0 if check_inputs is None else int(len(check_inputs)),
                  "threshold_images": threshold_images, "nvcc": nvcc},  # fmt: skip
    }
    _step(progress, "write")
    with times.span("compile"):
        manifest, digest = write_artifact(Path(out), executable, params, manifest, extra_files)
    progress("compile", f"written to {out}", len(STEPS), len(STEPS), unit="steps", eta=False)
    return CompileResult(Path(out), manifest, max_diff, relative, digest, threshold_images)


def _step(progress: Progress, name: str) -> None:
    """Progress as step ``name`` starts. Steps take unlike times (tuning may take hours): no estimate."""
    progress("compile", name, STEPS.index(name), len(STEPS), unit="steps", eta=False)


def _check(executable, params, gm, input_shape, images) -> tuple[float, float, int]:
    """Largest difference, its share of the output scale, and the images left out as at a
    threshold (``OutputComparison``), with the compiled model run on ``images`` in batches."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(executable, tvm.cpu())
    weights = [tvm.runtime.tensor(p) for p in params]
    batch = input_shape[0]
    comparison = OutputComparison(gm)
    with torch.no_grad():
        for start in range(0, len(images) - batch + 1, batch):
            x = images[start : start + batch].contiguous()
            got = vm["main"](tvm.runtime.tensor(x.numpy()), *weights)
            while not hasattr(got, "numpy"):
                got = got[0]
            comparison.add(x, got.numpy(), f"images {start}-{start + batch - 1} of the check")
    return comparison.result()


class OutputComparison:
    """The compiled model's outputs against the torch model's, batch by batch.

    Zero prediction decides on a sign. Where an activation it computes is within rounding of 0,
    the compiled and the torch model may decide apart, and the output jumps: neither is wrong.
    Such a batch shows in the torch model alone: moved by ``NUDGE`` of its input's scale (seeded
    draws, each both ways), its own output moves at least half as far as the compiled one is
    off. It is left out of the difference and counted. More than ``MAX_THRESHOLD_SHARE`` of the
    images left out (or more than one, of fewer than ten), or every image, fails the check.
    NaN or infinity on either side fails it too: NaN compares false, so a max over differences
    would report 0."""

    def __init__(self, gm: fx.GraphModule, directions: int = 2):
        self.gm, self.directions = gm, directions  # seeded nudge directions, each tried both ways
        self.worst = self.scale = 0.0
        self.images = self.at_threshold = 0

    def add(self, x: torch.Tensor, got: np.ndarray, where: str) -> None:
        expected = self._run(x)
        check_finite(expected, f"the torch model's outputs on {where} (nothing to compare the compiled model "
                     f"with)", CompiledMismatchError)  # fmt: skip
        check_finite(got, f"the compiled model's outputs on {where} (the torch model's are finite)",
                     CompiledMismatchError)  # fmt: skip
        self.images += len(x)
        self.scale = max(self.scale, float(np.abs(expected).max()))
        diff = float(np.abs(got - expected).max())
        if diff > TOLERANCE * max(self.scale, 1e-12) and self._nudged(x, expected) >= diff / 2:
            self.at_threshold += len(x)
        else:
            self.worst = max(self.worst, diff)

    def result(self) -> tuple[float, float, int]:
        allowed = max(1.0, MAX_THRESHOLD_SHARE * self.images)
        if self.at_threshold > allowed or self.at_threshold == self.images > 0:
            raise CompiledMismatchError(
                f"the compiled model differs from the torch model on {self.at_threshold} of {self.images} check "
                f"images where the torch model's own output jumps as far when its input moves by {NUDGE:g} of its "
                f"scale (zero predictions at their threshold): too many to trust the check"
            )
        return self.worst, self.worst / max(self.scale, 1e-12), self.at_threshold

    def _nudged(self, x: torch.Tensor, expected: np.ndarray) -> float:
        """How far the torch model's output moves when ``x`` moves by ``NUDGE`` of its scale."""
        generator = torch.Generator().manual_seed(0)
        step = NUDGE * float(x.abs().max())
        moved = 0.0
        for _ in range(self.directions):
            direction = step * torch.randn(x.shape, generator=generator)
            for nudged in (x + direction, x - direction):  # both ways: a value at 0 crosses it one way
                moved = max(moved, float(np.abs(self._run(nudged) - expected).max()))
        return moved

    def _run(self, x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            out = self.gm(x)
        return (out[0] if isinstance(out, (tuple, list)) else out).numpy()


def _nvcc_compile(executable, spec: dict) -> str:
    """Compile the generated CUDA C with nvcc (export_library does not): proof that it builds."""
    import tvm
    from tvm.support import nvcc

    if shutil.which("nvcc") is None:
        return "nvcc not found: the CUDA source was not compiled here"
    source = cuda_source(executable)
    suffix = spec["arch"].removeprefix("sm_")
    try:
        with tvm.target.Target(spec):
            binary = nvcc.compile_cuda(
                source, target_format="fatbin", arch=["-gencode", f"arch=compute_{suffix},code=sm_{suffix}"], compiler="nvcc"
            )
    except Exception as error:  # noqa: BLE001 - nvcc's own message says what failed
        lines = str(error).strip().splitlines() or ["(no message)"]
        reason = next((line.strip() for line in lines if "error" in line.lower()), lines[-1].strip())
        raise SparsifyError(f"nvcc cannot compile the generated CUDA for {spec['arch']}: {reason}") from error
    return f"compiled by nvcc for {spec['arch']} ({len(binary):,} bytes of fatbin)"
