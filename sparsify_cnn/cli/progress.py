"""Renders the library's progress callbacks (``sparsify_cnn.progress``) on stderr: the phase,
where it is, the count, the phase's elapsed time and, from its rate so far, an estimate of
what is left. On a terminal one line is redrawn in place; in a log a phase prints at most one
line every ``LOG_INTERVAL`` seconds and one when it ends, so logs stay short::

    with ProgressDisplay() as progress:
        train(model, data, config, progress=progress)

    [training] epoch 2 of 5, step 10 of 22  32/110 steps  14s elapsed, ~34s left  loss 0.4100
    [training] epoch 5 of 5  110/110 steps  done in 48s  loss 0.0321  calib top-1 accuracy 97.21% (359 images)

A heartbeat thread redraws the phase last heard of every ``HEARTBEAT`` seconds (at the same
throttle), so a step that blocks for minutes (a build, MetaSchedule's setup) shows time passing.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import click

LOG_INTERVAL = 20.0  # seconds between a phase's lines in a log
TTY_INTERVAL = 0.1  # seconds between redraws on a terminal
HEARTBEAT = 1.0  # seconds between redraws of a phase that has not called
RESERVED = ("unit", "at_most", "eta", "end")  # extras that shape the line rather than show in it
EXTRAS = {  # how known extras read; any other shows as "name value"
    "best_saved": "best saved {:,.0f} MACs/image",
    "saved": "saved {:,.0f} MACs/image",
    "accuracy": "accuracy {:.2%}",
    "speedup": "speedup {:.2f}x",
    "loss": "loss {:.4f}",
    "best_ms": "best {:.4g} ms",
}


@dataclass
class _Phase:
    start: float
    base: int  # done at the first call: a resumed run's rate counts only this run's work
    printed: float  # when a log line last printed (the start until one has)
    item: str = ""
    done: int = 0
    total: int | None = None
    extra: dict = field(default_factory=dict)


class ProgressDisplay:
    """A progress callback that draws on ``stream`` (default stderr). ``tty`` (default: the
    stream's) picks in-place redraws or throttled log lines. With ``heartbeat``, a thread
    redraws the phase last heard of every second, so work blocked in one long step (a build, a
    batch of trials) still shows its time growing; tests turn it off and move ``clock`` by hand."""

    def __init__(self, stream=None, tty: bool | None = None, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic, width: int | None = None,
                 heartbeat: bool = True):  # fmt: skip
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = interval if interval is not None else (TTY_INTERVAL if self.tty else LOG_INTERVAL)
        self.clock = clock
        self.width = width
        self.heartbeat = heartbeat
        self._phases: dict[str, _Phase] = {}  # open phases, the one last heard of last
        self._drawn: float | None = None  # when the live line was last drawn (tty); None: no live line
        self._lock = threading.RLock()  # the heartbeat draws from its own thread
        self._stop: threading.Event | None = None

    def __call__(self, phase: str, item: str, done: int, total: int | None, **extra) -> None:
        with self._lock:
            now = self.clock()
            state = self._phases.pop(phase, None) or _Phase(start=now, base=done, printed=now)
            self._phases[phase] = state
            state.item, state.done, state.total, state.extra = item, done, total, extra
            if extra.get("end") or (total is not None and done >= total and not extra.get("at_most")):
                self._end(phase, now, "done in")
            else:
                self._show(phase, state, now)
            if self.heartbeat and self._stop is None:
                self._start_heartbeat()

    def tick(self) -> None:
        """Redraw the phase last heard of, if a line is due: its elapsed time has grown."""
        with self._lock:
            if self._phases:
                phase = next(reversed(self._phases))
                self._show(phase, self._phases[phase], self.clock())

    def echo(self, text: str, err: bool = False) -> None:
        """Print ``text`` (stdout, or stderr with ``err``) below the live line, not over it."""
        with self._lock:
            self._clear()
            click.echo(text, err=err)

    def close(self) -> None:
        """End the phases still open (work stopped by an error or an interrupt), innermost first."""
        with self._lock:
            if self._stop is not None:
                self._stop.set()
                self._stop = None
            now = self.clock()
            for phase in reversed(list(self._phases)):
                self._end(phase, now, "stopped after")

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _show(self, phase: str, state: _Phase, now: float) -> None:
        if self.tty:
            if self._drawn is None or now - self._drawn >= self.interval:
                self._draw(line(phase, state, now))
                self._drawn = now
        elif now - state.printed >= self.interval:
            click.echo(line(phase, state, now), file=self.stream)
            state.printed = now

    def _end(self, phase: str, now: float, verb: str) -> None:
        state = self._phases.pop(phase)
        self._clear()
        click.echo(line(phase, state, now, verb), file=self.stream)

    def _draw(self, text: str) -> None:
        width = self.width or shutil.get_terminal_size((100, 24)).columns
        # A line longer than the terminal wraps, and \r would then redraw only its last row.
        click.echo(f"\r\033[K{text[: width - 1]}", nl=False, file=self.stream, color=True)

    def _clear(self) -> None:
        if self._drawn is not None:
            click.echo("\r\033[K", nl=False, file=self.stream, color=True)  # color: keep the escape
            self._drawn = None

    def _start_heartbeat(self) -> None:
        stop = self._stop = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT):
                self.tick()

        threading.Thread(target=beat, name="sparsify-progress", daemon=True).start()


def line(phase: str, state: _Phase, now: float, verb: str | None = None) -> str:
    """One progress line; ``verb`` ("done in") makes it the phase's last."""
    extra = state.extra
    count = f"{state.done}" if state.total is None else f"{state.done}/{state.total}"
    if extra.get("at_most") and state.total is not None:
        count = f"{state.done} of at most {state.total}"
    if extra.get("unit"):
        count += f" {extra['unit']}"
    elapsed = now - state.start
    if verb is not None:
        times = f"{verb} {duration(elapsed)}"
    else:
        times = f"{duration(elapsed)} elapsed"
        left = remaining(state, elapsed)
        if left is not None:
            times += f", {'at most ' if extra.get('at_most') else ''}~{duration(left)} left"
    shown = [_extra(name, value) for name, value in extra.items() if name not in RESERVED]
    return "  ".join(part for part in (f"[{phase}] {state.item}".rstrip(), count, times, *shown) if part)


def remaining(state: _Phase, elapsed: float) -> float | None:
    """Seconds left at the rate so far; None without a total, before a unit is done, or where
    units are too unlike to extrapolate."""
    worked = state.done - state.base
    if state.total is None or worked <= 0 or state.done >= state.total or state.extra.get("eta") is False:
        return None
    return elapsed / worked * max(0, state.total - state.done)


def duration(seconds: float) -> str:
    """``duration(75) == "1m15s"``; whole seconds under a minute, no seconds over an hour."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _extra(name: str, value) -> str:
    if name in EXTRAS:
        return EXTRAS[name].format(value)
    return f"{name.replace('_', ' ')} {value:.4g}" if isinstance(value, float) else f"{name.replace('_', ' ')} {value}"
