"""Perforation on the command line: its options of the main job, and the job run from them.
Imports no torch until the job runs (``sparsify --help`` reads the options)."""

from __future__ import annotations

import click

from ...option_types import Bounded

OPTIONS = (
    click.option("--mask", type=click.Choice(["uniform", "grid", "pooling", "impact"]), default="impact", help="[perforation] How kept positions are chosen."),
    click.option("--interpolation", type=click.Choice(["nearest", "zero", "barycentric"]), default="nearest", help="[perforation] How skipped positions are filled."),
    click.option("--speedup", type=Bounded(float, 1, low_open=True), help="[perforation] Stop once the network is this much faster (by --cost; > 1)."),
    click.option("--layers-per-step", type=Bounded(int, 1, 10**6), help="[perforation] Raise up to this many layers per greedy step, "
                  "the best by loss per time saved, when together they meet epsilon [default: one per 16 perforated layers; 1: the paper's greedy]."),
)  # fmt: skip
SHARED = ("epsilon", "epsilon_kind", "cost", "finetune_epochs", "finetune_lr")


def run(prepared, options: dict, context):
    from ...training import TrainConfig
    from .job import optimize_perforation
    from .report import write_report
    from .rewrite import PerforationConfig
    from .search import RateSearchConfig

    epsilon, speedup, seed = options["epsilon"], options["speedup"], options["seed"]
    if epsilon is None and speedup is None:
        epsilon = 0.01
    perforation = PerforationConfig(interpolation=options["interpolation"], layers=options["layers"], seed=seed)
    search = RateSearchConfig(mask=options["mask"], cost=options["cost"], speedup=speedup, epsilon=epsilon,
                              epsilon_kind=options["epsilon_kind"], batch_size=options["batch_size"], seed=seed,
                              layers_per_step=options["layers_per_step"])  # fmt: skip
    finetune = None
    if options["finetune_epochs"] > 0:
        lr = 0.01 if options["finetune_lr"] is None else options["finetune_lr"]
        finetune = TrainConfig(epochs=options["finetune_epochs"], lr=lr, seed=seed)
    measured = context.measured_timer(options["target"]) if options["cost"] == "measured" else None
    result = optimize_perforation(
        prepared, perforation, search, metric=options["metric"], finetune=finetune, measured=measured,
        checkpoint=context.checkpoint, resume=context.resume, progress=context.progress, crossover=context.crossover,
        world=context.world,
    )  # fmt: skip
    return result, write_report


def summary_line(report: dict) -> str:
    from ...job import accuracy_change

    macs = report["macs"]
    return f"perforation: {macs['speedup']:.2f}x fewer MACs ({100 * macs['saved_fraction']:.1f}% saved); {accuracy_change(report)}"
