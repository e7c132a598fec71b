"""Every numeric, choice or parsed option of every command, fuzzed: a value is either accepted
inside the option's documented range or refused as a usage error (exit 2, one ``error:`` line
on stderr), never anything else. At parse level: the commands' bodies are replaced by a
recorder, so no model loads."""

from __future__ import annotations

import math
import re
from unittest import mock

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsify_cnn.cli.main import cli
from sparsify_cnn.cli.options import MAX_INPUT_ELEMENTS, Bounded

PARSED = {"input_shape", "ones_range", "batches", "ssc_layer", "max_entry_memory", "normalize", "target"}


def _fuzzed(command: click.Command) -> list[click.Option]:
    return [
        p for p in command.params
        if isinstance(p, click.Option) and not p.is_flag
        and (isinstance(p.type, (Bounded, click.Choice)) or p.name in PARSED)
    ]  # fmt: skip


def _base_args(command: click.Command) -> list[str]:
    """The arguments and required options, given plausible values."""
    args = []
    for param in command.params:
        if isinstance(param, click.Argument):
            args.append("m")
        elif param.required:
            value = param.type.choices[0] if isinstance(param.type, click.Choice) else "x"
            args.append(f"{param.opts[0]}={value}")
    return args


CASES = [(name, option.name) for name, command in sorted(cli.commands.items()) for option in _fuzzed(command)]

TEXT = st.sampled_from(["", " ", "inf", "-inf", "nan", "NaN", "1e308", "-1e308", "1e309", "5e-324", "-0", "0", "1",
                        "2", "3", "1.5", "0.5", "1_000", "0x10", "1e3", "--out", "-1", "9" * 5000, "1,2", "1-3",
                        "1,3,28,28", "1x1x8x8", "0,1,8,8", "a=1,2", "c*=4,-", "c=0,2", "512MB", "0B", "imagenet",
                        "0.5,0.25", "0.5,0", "nan,1", "uniform", "none", "llvm", "llvm:znver3", "cuda:sm_90a",
                        "cuda:sm_9", "llvm:", "llvm: x", "cuda", "x86", "\x00", "１２"])  # fmt: skip
VALUES = st.one_of(
    TEXT,
    st.integers(min_value=-(10**6), max_value=10**6).map(str),
    st.integers().map(str),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=-2, max_value=2).map(str),
    st.text(max_size=12),
)


def _in_range(param: click.Option, value) -> bool:
    kind = param.type
    if isinstance(kind, click.Choice):
        return value in kind.choices
    if isinstance(kind, Bounded):
        if not isinstance(value, kind.kind) or isinstance(value, bool):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        low_ok = kind.low is None or (value > kind.low if kind.low_open else value >= kind.low)
        high_ok = kind.high is None or (value < kind.high if kind.high_open else value <= kind.high)
        return low_ok and high_ok
    if param.name == "input_shape":
        return len(value) == 4 and min(value) >= 1 and math.prod(value) <= MAX_INPUT_ELEMENTS
    if param.name == "ones_range":
        return 0 <= value[0] <= value[1] <= 16
    if param.name == "batches":
        return len(value) >= 1 and all(1 <= n <= 65536 for n in value)
    if param.name == "ssc_layer":
        return all(g is None or 1 <= g <= 65536 for _, *gp in value for g in gp)
    if param.name == "max_entry_memory":
        return isinstance(value, int) and value >= 1
    if param.name == "target":
        kind, colon, detail = value.partition(":")
        return (value == "none" and param.callback.__name__ == "target_or_none_callback") or (
            kind in ("llvm", "cuda") and (not colon or re.fullmatch(r"sm_\d{2,3}[a-z]?|[A-Za-z0-9][\w.+-]*", detail))
        )
    if param.name == "normalize":
        mean, std = value
        return all(math.isfinite(v) for v in mean + std) and all(v > 0 for v in std)
    raise AssertionError(f"no range known for {param.name}")


def _check(command_name: str, param_name: str, text: str) -> None:
    command = cli.commands[command_name]
    param = next(p for p in command.params if p.name == param_name)
    seen = {}
    with mock.patch.object(command, "callback", lambda *a, **params: seen.update(params)):
        result = CliRunner().invoke(cli, [command_name, *_base_args(command), f"{param.opts[0]}={text}"])
    if result.exit_code == 0:
        value = seen[param_name]
        value = value[-1:] if param.multiple and param.name != "ssc_layer" else value
        assert _in_range(param, value), f"{param.opts[0]}={text[:40]!r} accepted as {value!r}, outside its range"
        return
    assert result.exit_code == 2, f"{param.opts[0]}={text[:40]!r}: exit {result.exit_code}\n{result.output[:500]}"
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert lines[0].endswith(f"(see 'sparsify {command_name} --help')") and "Traceback" not in result.output


def test_every_command_has_fuzzed_options():
    commands = {name for name, _ in CASES}
    assert commands == set(cli.commands) - {"zoo", "run"}, commands  # zoo and run take no numeric option
    assert len(CASES) >= 40


@pytest.mark.parametrize("command_name, param_name", CASES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=VALUES)
def test_fuzzed_value_is_accepted_in_range_or_one_usage_error(command_name, param_name, text):
    _check(command_name, param_name, text)


@pytest.mark.parametrize("command_name, param_name", CASES)
def test_edge_values(command_name, param_name):
    for text in ("inf", "-inf", "nan", "1e308", "-1", "0", "", "9" * 5000, "5e-324"):
        _check(command_name, param_name, text)
