"""Wall-clock timing for benchmarks and reports: warm up, then the median of repeats.

``interleaved_ms`` times several candidates in rounds (each round runs every candidate once),
so that a machine slowed by other work slows them alike and their ratios stay meaningful.
Each timing follows one untimed run of the same candidate: thread pools (OpenMP's, TVM's)
spin for a while after a parallel region, and a candidate that starts while another
runtime's workers still spin on the same cores would be timed slow.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


def median_ms(fn: Callable[[], object], repeats: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    return interleaved_ms([fn], rounds=repeats, number=1, warmup=warmup)[0]


def interleaved_ms(
    fns: Sequence[Callable[[], object]], rounds: int = 10, number: int = 3, warmup: int = 2
) -> list[float]:
    """Median milliseconds of each ``fn()``: ``warmup`` untimed runs of each, then ``rounds``
    rounds in which each runs once untimed and ``number`` times in a row (one timing: their
    mean)."""
    return [statistics.median(samples) for samples in interleaved_samples(fns, rounds, number, warmup)]


def interleaved_samples(
    fns: Sequence[Callable[[], object]], rounds: int = 10, number: int = 3, warmup: int = 2
) -> list[list[float]]:
    """Every timing (milliseconds) of each ``fn()``, taken as ``interleaved_ms`` takes them: for
    the spread beside the median."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for fn, samples in zip(fns, times):
            if len(fns) > 1:
                fn()  # untimed: the previous candidate's worker threads may still be spinning
            start = time.perf_counter()
            for _ in range(number):
                fn()
            samples.append(1e3 * (time.perf_counter() - start) / number)
    return times
