"""SSC on the command line: its options of the main job, and the job run from them. Imports no
torch until the job runs (``sparsify --help`` reads the options)."""

from __future__ import annotations

from pathlib import Path

import click

from ...option_types import Bounded

# presets.PRESETS, kept import-free: importing it imports torch, which `sparsify --help` need
# not wait for (tests/techniques/ssc/test_cli.py checks that they agree)
PRESETS = (
    "vgg19-cifar10-10", "vgg19-cifar10-5", "vgg19-cifar10-2", "resnet32-cifar10-10", "resnet32-cifar10-5",
    "resnet32-cifar10-2", "resnet32-cifar10-10-swapped", "resnet32-cifar10-5-swapped", "resnet32-cifar10-2-swapped",
    "resnet50-imagenet-40", "resnet50-imagenet-20",
)  # fmt: skip


def _ssc_layers(ctx, param, values):
    choices = []
    for value in values:
        pattern, eq, pair = value.rpartition("=")
        g, comma, p = pair.partition(",")
        try:
            if not (eq and pattern and comma):
                raise ValueError
            choices.append((pattern, *(None if v.strip().lower() in ("-", "none") else int(v) for v in (g, p))))
        except ValueError:
            raise click.BadParameter(f"'{value}' is not GLOB=G,P such as 'conv*=4,2' (G or P may be '-')") from None
        if any(v is not None and not 1 <= v <= 65536 for v in choices[-1][1:]):
            raise click.BadParameter(f"'{value}': G and P must be in 1..65536 (or '-')")
    return tuple(choices)


OPTIONS = (
    click.option("--preset", type=click.Choice(PRESETS), help="[ssc] (g, p) per layer from a table of the seed, by filter count."),
    click.option("--target-params", type=Bounded(float, 0, 1, low_open=True), metavar="F", help="[ssc] Solve (g, p) per layer to keep this fraction of the parameters, in (0, 1]."),
    click.option("--ssc-layer", multiple=True, callback=_ssc_layers, metavar="GLOB=G,P",
                 help="[ssc] (g, p) for the layers GLOB matches, first match wins (repeatable; '-' leaves a branch out)."),
    click.option("--no-pointwise-branch", is_flag=True, help="[ssc] Leave out the interleaved 1x1 branch of k x k convs."),
    click.option("--nondividing", type=click.Choice(["skip", "nearest"]), default="skip",
                 help="[ssc] A preset value that divides no channel count: leave the layer dense or take the nearest divisor."),
)  # fmt: skip
SHARED = ("finetune_epochs", "finetune_lr")


def check_options(options: dict, given: set[str]) -> None:
    """Exactly one of --preset, --target-params, --ssc-layer says the (g, p) of each layer."""
    asked = [f"--{name.replace('_', '-')}" for name in ("preset", "target_params", "ssc_layer") if name in given]
    if len(asked) != 1:
        raise click.UsageError(f"--technique ssc needs exactly one of --preset, --target-params, --ssc-layer "
                               f"(got {', '.join(asked) or 'none'})")  # fmt: skip


def run(prepared, options: dict, context):
    from ...errors import TrainingDiverged
    from ...training import FINETUNE_LR, TrainConfig
    from .job import optimize_ssc
    from .report import write_report
    from .rewrite import SSCConfig

    config = SSCConfig(per_layer=options["ssc_layer"], preset=options["preset"], target_fraction=options["target_params"],
                       pointwise_branch=not options["no_pointwise_branch"], nondividing=options["nondividing"],
                       layers=options["layers"])  # fmt: skip
    finetune = None
    if options["finetune_epochs"] > 0:
        lr = FINETUNE_LR if options["finetune_lr"] is None else options["finetune_lr"]
        finetune = TrainConfig.finetune_recipe(options["finetune_epochs"], options["seed"], lr)
    checkpoint = context.checkpoint
    if not context.resume and Path(checkpoint).exists():
        Path(checkpoint).unlink()
    try:
        result = optimize_ssc(prepared, config, finetune, metric=options["metric"], checkpoint=checkpoint,
                              crossover=context.crossover, progress=context.progress)  # fmt: skip
    except TrainingDiverged as error:
        # Another lr is another run: the checkpoint of this one's finite epochs would be refused.
        kept = error.kept_epoch
        again = f" and --no-resume ({checkpoint} holds epoch {kept} of this run)" if kept else ""
        raise error.reworded("fine-tuning", f"a smaller --finetune-lr{again}") from None
    return result, write_report


def summary_line(report: dict) -> str:
    acc, name = report["accuracy"], report["metric_name"]
    before = f"{name} test {100 * acc['test']['dense']:.2f}% dense, {100 * acc['test']['ssc']:.2f}% SSC before training"
    after = f", {100 * acc['test']['finetuned']:.2f}% after" if "finetuned" in acc["test"] else ""
    return (f"ssc: {100 * report['params']['fraction']:.1f}% of parameters, {100 * report['macs']['fraction']:.1f}% "
            f"of MACs; {before}{after}")  # fmt: skip
