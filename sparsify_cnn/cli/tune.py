"""``sparsify tune-hparams``: Hyperband over the seed's search spaces (seed 000 Tables 1-6),
trials kept in an optuna SQLite file; the best setup is written as a ``sparsify train --config``
file."""

from __future__ import annotations

from pathlib import Path

import click

from .options import Bounded, data_option, seed_option

PRESETS = ("lenet", "cq", "alexlrn", "alexbn", "mlp", "resnet18")  # sparsify_cnn.techniques.stan.hyperband.PRESETS


@click.command("tune-hparams")
@click.argument("model")
@click.option(
    "--preset",
    type=click.Choice(PRESETS),
    required=True,
    metavar="NAME",
    help=f"The seed's search space: {', '.join(PRESETS)}.",
)
@data_option(default="digits")
@seed_option
@click.option("--trials", type=Bounded(int, 1, 10**6), default=30, help="Trials in all; a resumed study runs only the rest.")
@click.option("--max-epochs", type=Bounded(int, 1, 10**6), default=8, help="Hyperband's largest budget (epochs); the best setup trains this long.")
@click.option("--min-epochs", type=Bounded(int, 1, 10**6), default=1, help="Hyperband's smallest budget (epochs).")
@click.option("--reduction-factor", type=Bounded(int, 2, 1000), default=3, help="Hyperband's eta: each rung keeps 1/eta of the trials.")
@click.option(
    "--storage",
    default="hyperband.db",
    type=click.Path(dir_okay=False),
    help="optuna SQLite file holding the trials (the same command resumes from it), or a database URL "
    "(sqlite:///study.db, postgresql://host/db) that several workers share: run the same command in each.",
)
@click.option("--study", "study_name", help="Study name in the storage.  [default: MODEL-PRESET-DATA]")
@click.option(
    "--out",
    default="best-config.json",
    type=click.Path(dir_okay=False),
    help="Where to write the best setup (a `sparsify train --config` file).",
)
def tune_command(
    model, preset, data, seed, trials, max_epochs, min_epochs, reduction_factor, storage, study_name, out, normalize=None
):  # fmt: skip
    """Tune the hyper-parameters of zoo MODEL with Hyperband over a preset search space.

    Batch size 100 and a fixed seed, as in the seed; each trial trains from scratch and reports
    its calibration error every epoch. Example:

        sparsify tune-hparams zoo:cq --preset cq --data digits --trials 30 --out cq-best.json

        sparsify train zoo:cq --config cq-best.json --out cq.pt2
    """
    from .. import models
    from ..data import load_data
    from ..storage import claim_output
    from ..techniques.stan.hyperband import StudyConfig, is_shared, run_study, shown, write_config
    from .progress import ProgressDisplay

    ctx = click.get_current_context()  # before any trial: both files writable and this run's alone
    ctx.with_resource(claim_output(out, inside=False))
    if not is_shared(storage) and Path(storage).absolute() != Path(out).absolute():
        ctx.with_resource(claim_output(storage, inside=False, option="--storage"))  # a second run would take over its trials
    entry = models.get_entry(model)
    config = StudyConfig(preset, storage, trials, max_epochs, min_epochs, reduction_factor, seed, study_name)
    dataset = load_data(data, entry.input_shape, seed=seed, normalize=normalize)
    click.echo(f"Hyperband: {model} on {dataset.name} ({len(dataset.train)} train / {len(dataset.calib)} calib), "
               f"preset {preset}, {trials} trials, {min_epochs}-{max_epochs} epochs, storage {shown(storage)}")  # fmt: skip

    progress = ProgressDisplay()

    def on_trial(trial) -> None:
        values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
        epochs = max(trial.intermediate_values, default=0)
        value = f"calib error {trial.value:.4f}" if trial.value is not None else "no value"
        progress.echo(
            f"  trial {trial.number:3d} {trial.state.name.lower():8s} after {epochs} epochs: {value}  ({values})"
        )

    with progress:
        result = run_study(entry.name, dataset, config, on_trial=on_trial, progress=progress)
    if result.resumed:
        click.echo(f"resumed a study of {result.resumed} trials" +
                   (f"; re-ran interrupted trials {result.rerun}" if result.rerun else ""))  # fmt: skip
    counts = ", ".join(f"{n} {state}" for state, n in sorted(result.counts.items()))
    click.echo(f"best: trial {result.best_trial}, calib error {result.best_error:.4f} ({counts})")
    write_config(out, entry.name, result, config, dataset)
    click.echo(f"wrote {out} (train with: sparsify train {model} --config {out} --data {data} --out MODEL.pt2)")
