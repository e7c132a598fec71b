"""End to end on this machine: the compiled artifact, as a deployment loads it, beside the dense
model on what users run instead (eager PyTorch, and ONNX Runtime where it is installed). The main
job's last lines.

Each candidate is timed in a block of its own (warm-up runs, then ``rounds`` timings), the blocks
taking turns ``passes`` times. Single runs interleaved across runtimes let one runtime's spinning
worker threads slow the next (``benchmarks/cpu_baselines.py --together`` shows by how much); a
block's warm-up runs absorb that, and the turns show drift."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..report.timing import interleaved_samples
from .runners import BackendUnavailable, TVMSettings, make_runner

LABELS = {"artifact": "artifact", "eager": "dense, eager PyTorch", "ort": "dense, ONNX Runtime"}


@dataclass
class Timed:
    """One candidate's timings (ms), or why it could not run here."""

    name: str
    samples: list[float] = field(default_factory=list)
    unavailable: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    def to_dict(self) -> dict:
        if not self.samples:
            return {"name": self.name, "unavailable": self.unavailable}
        return {"name": self.name, "median_ms": self.median, "min_ms": min(self.samples), "max_ms": max(self.samples),
                "samples": len(self.samples)}  # fmt: skip


def end_to_end(
    artifact: Path, dense: nn.Module, x: torch.Tensor, baselines: Sequence[str] = ("eager", "ort"),
    rounds: int = 10, warmup: int = 3, passes: int = 2,
) -> list[Timed]:  # fmt: skip
    """Time the artifact in ``artifact`` (loaded as ``sparsify_cnn.runtime.load`` loads it) and
    ``dense`` on each of ``baselines``, on input ``x``; the artifact first."""
    from ..runtime import load

    compiled = load(artifact)
    inputs = x.detach().cpu().numpy()
    runners: dict[str, Callable[[], object]] = {"artifact": lambda: compiled(inputs)}
    timed = {"artifact": Timed("artifact")}
    for backend in baselines:
        timed[backend] = Timed(backend)
        try:
            runners[backend] = make_runner(backend, dense, x, TVMSettings())
        except BackendUnavailable as error:
            timed[backend].unavailable = str(error)
    for _ in range(passes):
        for name, run in runners.items():  # a block: warm-up runs, then this candidate alone
            timed[name].samples += interleaved_samples([run], rounds=rounds, number=1, warmup=warmup)[0]
    return list(timed.values())


def summary_lines(timed: Sequence[Timed], batch: int, threads: int) -> list[str]:
    """The lines the main job ends with: each candidate's median and spread, and how many times
    faster the artifact runs than each baseline (below 1: slower)."""
    artifact = timed[0]
    lines = [f"latency here, batch {batch}, {threads} threads (median [min-max] of {len(artifact.samples)} runs):"]
    for entry in timed:
        label = f"  {LABELS[entry.name]:<22}"
        if entry.median is None:
            lines.append(f"{label}n/a ({entry.unavailable})")
            continue
        line = f"{label}{entry.median:.2f} ms [{min(entry.samples):.2f}-{max(entry.samples):.2f}]"
        if entry is not artifact:
            line += f"  artifact {entry.median / artifact.median:.2f}x its speed"
        lines.append(line)
    return lines
