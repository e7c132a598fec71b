"""``sparsify train``: train a model on a data set and save it as a torch.export program; with
STAN (``--stan``), the seed's baselines (``--conv-dropout``, ``--meprop-k``) or a tuned setup
(``--config``), through the STAN trainer, which reports coverage and timings."""

from __future__ import annotations

import click

from ..option_types import MemorySize
from .options import OPTIMIZER_MAX, Bounded, data_option, model_options, seed_option

STAN_VARIANTS = ("stan", "stan-lite")
# sparsify_cnn.techniques.stan.conv.KERNELS (kept import-free)
STAN_KERNELS = ("compiled", "positions", "channels", "dense", "auto")


@click.command("train")
@model_options
@data_option(default="digits")
@seed_option
@click.option("--epochs", type=Bounded(int, 0, 10**6), default=8, help="Training epochs.")
@click.option("--batch-size", type=Bounded(int, 1, 65536), default=64, help="Images per step.")
@click.option("--lr", type=Bounded(float, 0, OPTIMIZER_MAX, low_open=True), default=0.05, help="Initial learning rate (cosine decay to 0).")
@click.option("--momentum", type=Bounded(float, 0, OPTIMIZER_MAX), default=0.9, help="SGD momentum (>= 0; < 1 for plain training).")
@click.option("--weight-decay", type=Bounded(float, 0, OPTIMIZER_MAX), default=5e-4, help="L2 penalty.")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default="sgd", help="Optimizer.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="Training setup file (what `sparsify tune-hparams` writes); options given here override it.",
)
@click.option(
    "--stan",
    "stan_variant",
    type=click.Choice(STAN_VARIANTS),
    help="Train with STAN (replays stored values, fp16 per entry) or STAN-lite (zeros, 1 bit per entry).",
)
@click.option("--theta", type=Bounded(float), help="STAN threshold: conv outputs <= theta are covered.  [default: 0]")
@click.option(
    "--coverage",
    type=Bounded(float, 0, 1, low_open=True, high_open=True),
    help="Instead of --theta: target coverage per layer in (0, 1); theta is that quantile of each batch.",
)
@click.option("--pre-epochs", type=Bounded(int, 0, 10**6), default=0, help="STAN's p_t: dense epochs before the first entry-matrix epoch.")
@click.option("--period", type=Bounded(int, 1, 10**6), default=1, help="STAN's Z: skipping epochs after each entry-matrix epoch.")
@click.option(
    "--stan-kernel",
    type=click.Choice(STAN_KERNELS),
    default="auto",
    metavar="KERNEL",
    help="Skipping forward: compiled (only the uncovered entries, a TVM-compiled CPU kernel), positions (gather "
    "uncovered positions, one GEMM), channels (per channel), dense (compute all, then overwrite) or auto "
    "(compiled for layers with at least 256 multiply-adds per output and 50% coverage, else dense).",
)
@click.option(
    "--max-entry-memory",
    default="2GiB",
    metavar="SIZE",
    type=MemorySize(),
    help="Largest entry matrix to allocate (512MB, 2GiB, bytes); checked before training.",
)
@click.option(
    "--layers",
    multiple=True,
    metavar="GLOB",
    help="Conv layers for STAN and --conv-dropout (repeatable; default: all).",
)
@click.option("--conv-dropout", type=Bounded(float, 0, 1, high_open=True), default=0.0, help="Dropout on conv outputs (the seed's baseline uses 0.5); 0: off.")
@click.option(
    "--meprop-k",
    type=Bounded(int, 0, 10**6),
    default=0,
    help="meProp: keep the top-k output gradients per sample of every linear layer but the last; 0: off.",
)
@click.option(
    "--report",
    "report_file",
    type=click.Path(dir_okay=False),
    help="Write the training report (coverage per layer and epoch, timings, speedups) as JSON.",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where to write the trained model (.pt2).")
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False),
    help="Training state, saved after every epoch: the same command run again after an interruption resumes "
    "from it and ends with the same weights; removed once --out is written.  [default: OUT.ckpt]",
)
@click.option("--resume/--no-resume", default=True, help="Resume from the checkpoint if there is one.")
@click.pass_context
def train_command(
    ctx, model, arch, trust_pickle, input_shape, leaf_modules, capture_method, data, seed,
    epochs, batch_size, lr, momentum, weight_decay, optimizer, config_file, stan_variant, theta, coverage,
    pre_epochs, period, stan_kernel, max_entry_memory, layers, conv_dropout, meprop_k, report_file, out,
    checkpoint, resume, normalize=None,
):  # fmt: skip
    """Train MODEL on --data (seeded, deterministic) and save it to --out.

    A zoo model is built with as many outputs as the data has classes. Examples:

        sparsify train zoo:lenet --data digits --epochs 8 --out lenet.pt2

        sparsify train zoo:cq --stan stan-lite --theta 0.1 --pre-epochs 1 --out cq.pt2

        sparsify train zoo:cq --config best.json --out cq.pt2
    """
    import torch

    from ..errors import InputError
    from ..evaluate import evaluate
    from ..model_io import save_program
    from ..pipeline import prepare
    from ..versions import versions

    given = {name for name in ctx.params if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT}
    stan_only = {"theta", "coverage", "pre_epochs", "period", "stan_kernel"} & given
    if stan_only and not stan_variant:
        raise InputError(f"--{min(stan_only).replace('_', '-')} applies to STAN: add --stan stan or --stan stan-lite")
    advanced = bool(config_file or stan_variant or conv_dropout or meprop_k or optimizer != "sgd" or report_file)
    setup = None
    if advanced:
        setup = _setup(ctx.params, given)
        seed = setup.seed
    from ..storage import claim_output

    # Before training: a finished model must not be lost to an --out that cannot be written.
    ctx.with_resource(claim_output(out, inside=False))
    if report_file:
        ctx.with_resource(claim_output(report_file, inside=False, option="--report"))
    checkpoint = _checkpoint_path(out, checkpoint)
    if checkpoint is not None and ctx.params["checkpoint"] is not None:  # the default is covered by --out's lock
        ctx.with_resource(claim_output(checkpoint, inside=False, option="--checkpoint"))
    if checkpoint is not None and not resume:
        checkpoint.unlink(missing_ok=True)
    torch.manual_seed(seed)
    prepared = prepare(
        model,
        normalize=normalize,
        arch=arch,
        trust_pickle=trust_pickle,
        input_shape=input_shape,
        data=data,
        leaf_modules=leaf_modules,
        capture_method=capture_method,
        seed=seed,
    )
    dataset, module = prepared.data, prepared.loaded.module
    if prepared.loaded.format == "export":  # torch refuses module.train() on an exported program
        raise InputError(
            f"'{model}' is a torch.export program, which torch cannot train (its graph is fixed for inference); "
            "train from a state dict with --arch, or from zoo:NAME"
        )
    image_shape = prepared.captured.input_shape[1:]
    click.echo(f"training {model} on {dataset.name} ({len(dataset.train)} train / {len(dataset.calib)} calib images)")
    if setup is None:
        from ..training import TrainConfig, train
        from .progress import ProgressDisplay

        config = TrainConfig(epochs, batch_size, lr, momentum, weight_decay, seed)
        with ProgressDisplay() as progress:
            result = train(
                module,
                dataset,
                config,
                on_epoch=lambda log: progress.echo(f"  epoch {log.epoch:3d}  loss {log.loss:.4f}  calib {log.calib}"),
                progress=progress,
                checkpoint=checkpoint,
            )
        seconds, train_info, report = result.seconds, config.to_dict(), None
        if result.resumed_from:
            click.echo(f"resumed from {checkpoint} (epoch {result.resumed_from})")
    else:
        module, report = _train_advanced(prepared, setup, max_entry_memory, model, report_file, checkpoint)
        seconds, train_info = report.seconds, setup.to_dict()
    test = evaluate(module, dataset.test)
    click.echo(f"trained in {seconds:.1f} s; test split: {test}")
    metadata = {
        **prepared.loaded.metadata,
        "num_classes": dataset.num_classes,
        "data": dataset.name,
        "data_fingerprint": dataset.fingerprint(),
        "train": train_info,
        "test": {"metric": test.metric, "value": test.value, "count": test.count},
        "versions": versions(),
    }
    save_program(module, tuple(image_shape), out, metadata)
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)  # the model is saved: nothing left to resume
    click.echo(f"saved {out}")


def _checkpoint_path(out: str, checkpoint: str | None):
    """The training checkpoint: --checkpoint, else OUT.ckpt beside a regular --out file (none
    beside a device such as /dev/stdout)."""
    from pathlib import Path

    if checkpoint is None:
        target = Path(out)
        if target.exists() and not target.is_file():
            return None
        checkpoint = target.with_name(target.name + ".ckpt")
    from ..errors import InputError

    path = Path(checkpoint)
    if path.exists() and not path.is_file():
        raise InputError(f"training checkpoint '{path}' is not a regular file; choose another --checkpoint")
    if path.absolute() == Path(out).absolute():
        raise InputError(f"--checkpoint and --out are both '{out}'; the checkpoint needs a file of its own")
    return path


def _setup(params: dict, given: set[str]):
    """The training setup: the --config file's, with the options given on the command line on top."""
    from dataclasses import replace

    from ..techniques.stan.hyperband import read_config
    from ..techniques.stan.rewrite import StanConfig
    from ..techniques.stan.trainer import TrainSetup

    setup = read_config(params["config_file"]) if params["config_file"] else TrainSetup()
    plain = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "seed", "optimizer", "conv_dropout", "meprop_k")
    changes = {name: params[name] for name in plain if not params["config_file"] or name in given}
    if params["layers"]:
        changes["dropout_layers"] = tuple(params["layers"])
    if params["stan_variant"]:
        theta = params["theta"] if params["theta"] is not None or params["coverage"] is not None else 0.0
        changes["stan"] = StanConfig(
            variant=params["stan_variant"], theta=theta, coverage=params["coverage"],
            pre_epochs=params["pre_epochs"], period=params["period"], kernel=params["stan_kernel"],
            layers=tuple(params["layers"]),
        )  # fmt: skip
    return replace(setup, **changes)


def _train_advanced(prepared, setup, max_entry_memory: int, model: str, report_file: str | None, checkpoint=None):
    from ..errors import InputError
    from ..option_types import format_bytes
    from ..storage import write_json
    from ..techniques.stan.hyperband import build_zoo
    from ..techniques.stan.trainer import fit
    from .progress import ProgressDisplay

    gm = prepared.captured.graph_module
    if setup.model_options:
        if prepared.loaded.format != "zoo":
            raise InputError(f"the setup sets model options ({', '.join(setup.model_options)}): they need a zoo model")
        gm = build_zoo(prepared.loaded.metadata["zoo"], prepared.captured.input_shape[1:],
                       prepared.data.num_classes or 10, setup.model_options)  # fmt: skip

    progress = ProgressDisplay()
    echo = progress.echo  # below the progress line while it shows

    def rewritten(rewrites: dict, entry_bytes: int) -> None:
        for what, layers in rewrites.items():
            echo(f"  {what.replace('_', ' ')}: {', '.join(layers) or 'no layer'}")
        if setup.stan:
            stan = setup.stan
            rule = f"theta {stan.theta:g}" if stan.coverage is None else f"coverage {stan.coverage:g} per layer"
            echo(f"  {stan.variant}: {rule}, p_t {stan.pre_epochs}, Z {stan.period}, kernel {stan.kernel}; "
                 f"entry matrix {format_bytes(entry_bytes)}")  # fmt: skip

    def epoch(record) -> None:
        line = f"  epoch {record.epoch:3d}  {record.kind:5s}  loss {record.loss:.4f}  calib {record.calib}"
        line += f"  {record.seconds:.2f} s"
        if record.layers:
            line += "  coverage " + " ".join(f"{n} {100 * s['coverage']:.0f}%" for n, s in record.layers.items())
        echo(line)

    with progress:
        result = fit(gm, prepared.data, setup, max_entry_memory=max_entry_memory, on_epoch=epoch,
                     on_rewrite=rewritten, checkpoint=checkpoint, progress=progress)  # fmt: skip
    if result.resumed_from:
        click.echo(f"resumed from {checkpoint} (epoch {result.resumed_from})")
    if setup.stan:
        click.echo("  per layer, seconds per epoch: t_f dense forward, t_b backward, t_e building E, "
                   "t_i saved by a skipping forward (negative: it cost)")  # fmt: skip
        for name, t in result.layer_times().items():
            click.echo(f"    {name}: t_f {t.t_f:.3f}  t_b {t.t_b:.3f}  t_e {t.t_e:.3f}  t_i {t.t_i:.3f}")
        click.echo(
            f"  training speedup over dense epochs: measured {result.measured_speedup():.2f}x, timing model "
            f"{result.predicted_speedup():.2f}x (dense epoch {result.dense_epoch_seconds():.2f} s)"
        )
    if report_file:
        write_json(report_file, {"model": model, **result.to_dict()})
        click.echo(f"wrote {report_file}")
    return result.graph_module, result
