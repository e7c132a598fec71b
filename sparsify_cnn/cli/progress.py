"""Progress of long searches on stderr: phase, target, done / total, best MACs saved so far.
Redrawn in place on a terminal; a line every few seconds in logs."""

from __future__ import annotations

import sys
import time

import click


class ProgressLine:
    def __init__(self, stream=None, interval: float | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 5.0)
        # None until the first line: monotonic() counts from boot on Linux, so a start of 0.0
        # would swallow the first line on a machine up for less than the interval.
        self._last: float | None = None
        self._shown = False

    def __call__(self, phase: str, target: str, done: int, total: int, best: float) -> None:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval:
            return
        self._last = now
        count = f"{done}/{total}" if total else f"{done}"
        text = f"[{phase}] {target} {count}  best saved {best:,.0f} MACs/image"
        if self.tty:
            click.echo(f"\r\033[K{text}", nl=False, file=self.stream)
            self._shown = True
        else:
            click.echo(text, file=self.stream)

    def close(self) -> None:
        if self._shown:
            click.echo("", file=self.stream)
