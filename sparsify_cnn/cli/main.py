"""The root ``sparsify`` command. Heavy imports (torch, TVM) wait inside commands so that
``--help`` is fast."""

from __future__ import annotations

import click

from ..errors import SparsifyError
from .bench import bench_command
from .compile import compile_command, run_command
from .inspect import inspect_command
from .optimize import optimize_command
from .train import train_command
from .tune import tune_command
from .zoo import zoo_command


class _Root(click.Group):
    """Prints a user error as one line and exits with its code, never with a traceback.
    ``sparsify MODEL ...`` (no command name) runs the default command, ``optimize``."""

    default_command = "optimize"

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = [self.default_command, *args]
        return super().resolve_command(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SparsifyError as error:
            click.echo(f"error: {error}", err=True)
            ctx.exit(error.exit_code)


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
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
