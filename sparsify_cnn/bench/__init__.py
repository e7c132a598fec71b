"""Measured speed: the dense and the transformed model, and each transformed layer, timed on
PyTorch eager, torch.compile and TVM, beside their theoretical (MAC) speedups."""

from .render import render_markdown
from .runners import BACKENDS, BackendUnavailable, TVMSettings, make_runner
from .suite import BASELINES, BenchConfig, BenchResult, Entry, Timings, bench

__all__ = ["BACKENDS", "BASELINES", "BackendUnavailable", "BenchConfig", "BenchResult", "Entry", "TVMSettings",
           "Timings", "bench", "make_runner", "render_markdown"]  # fmt: skip
