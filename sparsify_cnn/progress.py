"""How long work reports where it is, without printing: the library calls a callback, the CLI
renders it (``sparsify_cnn.cli.progress``)::

    progress(phase, item, done, total, **extra)
    progress("training", "epoch 2 of 5, step 10 of 22", 32, 110, unit="steps", loss=0.41)

``phase`` names the work ("training", "compile"); ``item`` says where in it the work is;
``done`` of ``total`` units are finished (``total`` None when unknown). A phase starts with its
first call (best made with the count it starts from, before the first unit) and ends with the
call where ``done == total``, or one with ``end=True`` (a search that stops early or never
knew its total; the only end of an ``at_most`` phase). Extras the renderer reads:

- ``unit``: what ``done`` counts ("steps", "trials");
- ``at_most=True``: ``total`` is an upper bound (the search may stop before it, and says so
  with ``end=True``);
- ``eta=False``: units too unlike for their rate to predict what is left (compile steps);
- ``end=True``: this call ends the phase.

Any other extra is shown beside the count (``loss``, ``best_saved``). A callback must be cheap:
producers call it after every unit (every training step).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

Progress = Callable[..., None]  # (phase: str, item: str, done: int, total: int | None, **extra)


def silent(phase: str, item: str, done: int, total: int | None, **extra) -> None:
    """The callback of a caller that does not ask for progress."""


class PhaseTimes:
    """Wall seconds spent in each named phase of a job, in the order the phases first ran (a
    phase entered twice adds up). Example::

        times = PhaseTimes()
        with times.span("dense cache"):
            ...
        times.line()  # 'dense cache 3.2 s'
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def span(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def update(self, seconds: dict[str, float]) -> None:
        for name, value in seconds.items():
            self.add(name, value)

    def line(self) -> str:
        return phases_line(self.seconds)


def phases_line(seconds: dict[str, float]) -> str:
    """``'capture 1.2 s, dense cache 3.4 s, ...'``; ``'none'`` without phases."""
    return ", ".join(f"{name} {_duration(value)}" for name, value in seconds.items()) or "none"


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
