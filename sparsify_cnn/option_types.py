"""Command-line value types every layer may declare options with (the CLI and the techniques'
own options): numbers checked against their range when the command line is read."""

from __future__ import annotations

import math

import click


class Bounded(click.ParamType):
    """An integer, or a finite float, within bounds: a value outside them (or inf, nan, a
    non-number) is a usage error when the command line is parsed, before any work. click's
    FloatRange lets inf and nan through. Example::

        click.option("--epsilon", type=Bounded(float, 0, 1, high_open=True))  # in [0, 1)
    """

    def __init__(self, kind: type = float, low=None, high=None, low_open: bool = False, high_open: bool = False):
        self.kind, self.low, self.high, self.low_open, self.high_open = kind, low, high, low_open, high_open
        self.name = "integer" if kind is int else "float"

    @property
    def range(self) -> str:
        """The range in words: ``>= 1``, ``> 0``, ``in [0, 1)``, ``in 2..4``."""
        if self.low is not None and self.high is not None:
            if self.kind is int:
                return f"in {self.low}..{self.high}"
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return "finite"

    def convert(self, value, param, ctx):
        if isinstance(value, bool):
            self.fail(f"{value!r} is not a number", param, ctx)
        try:
            number = self.kind(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError, OverflowError):
            what = "an integer" if self.kind is int else "a number"
            self.fail(f"{str(value)[:40]!r} is not {what}", param, ctx)
        if self.kind is float and not math.isfinite(number):
            self.fail(f"must be a finite number {self.range}, got {number}", param, ctx)
        low_bad = self.low is not None and (number <= self.low if self.low_open else number < self.low)
        high_bad = self.high is not None and (number >= self.high if self.high_open else number > self.high)
        if low_bad or high_bad:
            shown = f"{number:g}" if self.kind is float else str(number)
            shown = shown if len(shown) < 30 else f"{shown[:12]}..."
            self.fail(f"must be {self.range}, got {shown}", param, ctx)
        return number

    def __repr__(self) -> str:
        return f"Bounded({self.kind.__name__} {self.range})"
