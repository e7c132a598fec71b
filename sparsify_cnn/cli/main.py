"""The root ``sparsify`` command. Heavy imports (torch, TVM) wait inside commands so that
``--help`` is fast."""

from __future__ import annotations

import errno

import click

from ..errors import SparsifyError
from .bench import bench_command
from .compile import compile_command, run_command
from .inspect import inspect_command
from .optimize import optimize_command
from .train import train_command
from .tune import tune_command
from .zoo import zoo_command


class _OneLine(click.ClickException):
    """A click error (unknown option, bad value, "interrupted") in the tool's own form:
    ``error: <message> (see 'sparsify optimize --help')``, one line on stderr, same exit code."""

    def __init__(self, error: click.ClickException, help_path: str | None):
        message = _printable(" ".join(error.format_message().split()))
        super().__init__(f"{message} (see '{help_path} --help')" if help_path else message)
        self.exit_code = error.exit_code

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", file=file, err=file is None)


def _printable(text: str) -> str:
    """``text`` with control characters escaped: a value or file name echoed back may hold
    terminal escapes, which are shown, never sent to the terminal; a newline (one in a file name)
    is shown as ``\\n`` too, so the message stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _one_line(error: click.ClickException, ctx: click.Context | None) -> click.ClickException:
    if isinstance(error, (_OneLine, click.exceptions.NoArgsIsHelpError)):
        return error  # NoArgsIsHelpError shows the help, as ``--help`` does
    if not isinstance(error, click.UsageError):
        return _OneLine(error, None)
    if error.ctx is not None and error.ctx.command is not (ctx and ctx.command):
        return _OneLine(error, error.ctx.command_path)
    command = ctx.meta.get("sparsify.command") if ctx else None  # raised in a command's body
    path = ctx.command_path if ctx else "sparsify"
    return _OneLine(error, f"{path} {command}" if command else path)


class _Root(click.Group):
    """Prints a user error as one line and exits with its code, never with a traceback; click's
    usage errors too. ``sparsify MODEL ...`` (no command name) runs the default command,
    ``optimize``."""

    default_command = "optimize"

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = [self.default_command, *args]
        name, command, rest = super().resolve_command(ctx, args)
        ctx.meta["sparsify.command"] = name
        return name, command, rest

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.ClickException as error:  # the root's own options
            raise _one_line(error, None) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SparsifyError as error:
            if not getattr(error, "told_by_main", False):  # under torchrun, a failure all ranks share is told once
                click.echo(f"error: {_printable(str(error))}", err=True)
            ctx.exit(error.exit_code)
        except click.ClickException as error:
            raise _one_line(error, ctx) from None
        except OSError as error:
            # files are written through storage (OutputError): a full or failing disk reaching here is
            # standard output's (`sparsify zoo > /dev/full`); click handles a closed pipe itself
            if error.errno not in (errno.ENOSPC, errno.EIO, errno.EDQUOT):
                raise
            click.echo(f"error: cannot write the command's output: {error.strerror}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:  # Ctrl-C where a command has nothing to add (click would print "Aborted!")
            click.echo("error: interrupted", err=True)
            ctx.exit(1)


@click.group("sparsify", cls=_Root, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="sparsify-cnn", prog_name="sparsify")
def cli():
    """Make a CNN measurably faster within a bounded accuracy loss.

    sparsify captures a PyTorch model as a torch.fx graph, rewrites it with acceleration ops
    (zero prediction, perforated and structured sparse convolutions), searches masks under an
    accuracy budget on calibration data, compiles it with Apache TVM and reports MACs and
    measured latency side by side.

    sparsify MODEL [OPTIONS] is short for sparsify optimize MODEL [OPTIONS].
    """


cli.add_command(optimize_command)
cli.add_command(train_command)
cli.add_command(inspect_command)
cli.add_command(zoo_command)
cli.add_command(compile_command)
cli.add_command(run_command)
cli.add_command(tune_command)
cli.add_command(bench_command)


def main() -> None:
    cli(prog_name="sparsify")
