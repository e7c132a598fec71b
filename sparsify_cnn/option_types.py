"""Command-line value types every layer may declare options with (the CLI and the techniques'
own options): numbers checked against their range when the command line is read."""

from __future__ import annotations

import math
import re

import click

from .errors import InputError


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


_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


def parse_bytes(text: str) -> int:
    """``"512MB"``, ``"2GiB"``, ``"1.5g"`` or a plain number of bytes, as bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise InputError(f"'{text}' is not a memory size such as 512MB, 2GiB or 1000000 (bytes)")
    return int(float(match.group(1)) * _UNITS[unit])


def format_bytes(n: int) -> str:
    """``format_bytes(3 * 2**20)`` is ``'3.00 MiB'``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


class MemorySize(click.ParamType):
    """A memory size (``512MB``, ``2GiB``, bytes) of at least one byte, as bytes."""

    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            size = parse_bytes(value)
        except InputError as error:
            self.fail(str(error), param, ctx)
        except OverflowError:  # digits beyond a float: "999...9GiB"
            self.fail(f"'{str(value)[:20]}...' is beyond any memory size", param, ctx)
        if size < 1:
            self.fail(f"'{value}' must be at least 1 byte", param, ctx)
        return size
