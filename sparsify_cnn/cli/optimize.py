"""``sparsify [optimize] MODEL``: the main job (choose masks or rates under an accuracy budget
or speed target, verify, write plan, rewritten model, report and compiled artifact). It is the
default command; ``--technique`` picks what is inserted."""

from __future__ import annotations

from pathlib import Path

import click

from .options import OPTIMIZER_MAX, Bounded, data_option, model_options, seed_option, target_or_none_callback

# sparsify_cnn.passes.ssc_presets.PRESETS, kept import-free: importing the passes imports torch,
# which `sparsify --help` need not wait for (tests/cli/test_ssc_cli.py checks that they agree)
SSC_PRESETS = (
    "vgg19-cifar10-10", "vgg19-cifar10-5", "vgg19-cifar10-2", "resnet32-cifar10-10", "resnet32-cifar10-5",
    "resnet32-cifar10-2", "resnet32-cifar10-10-swapped", "resnet32-cifar10-5-swapped", "resnet32-cifar10-2-swapped",
    "resnet50-imagenet-40", "resnet50-imagenet-20",
)  # fmt: skip


def _ones_range(ctx, param, value):
    if value is None:
        return None
    try:
        low, _, high = value.partition("-")
        low, high = int(low), int(high or low)
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a range such as 1-3") from None
    if not 0 <= low <= high <= 16:  # a pattern has at most 4 x 4 ones
        raise click.BadParameter(f"'{value}' must be LOW-HIGH with 0 <= LOW <= HIGH <= 16")
    return low, high


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


@click.command("optimize")
@model_options
@data_option(default="digits")
@seed_option
@click.option("--technique", type=click.Choice(["spatial", "perforation", "ssc"]), default="spatial",
              help="What to insert: zero prediction (Spatial ops), perforated convs or structured sparse convs.")  # fmt: skip
@click.option("--epsilon", type=Bounded(float, 0, 1, high_open=True), help="Largest accuracy loss allowed on the calibration split, in [0, 1) [default: 0.01; "
              "none for perforation with --speedup].")  # fmt: skip
@click.option("--epsilon-kind", type=click.Choice(["absolute", "relative"]), default="absolute", help="Epsilon in accuracy points or relative to the dense accuracy.")
@click.option("--metric", type=click.Choice(["auto", "top1", "agreement"]), default="auto", help="top1 against labels, agreement with the dense model; auto picks by the data.")
@click.option("--layers", multiple=True, metavar="GLOB", help="Layers to transform (repeatable; default: every layer the technique can take).")
@click.option("--batch-size", type=Bounded(int, 1, 65536), default=256, help="Images per forward pass during the search.")
@click.option("--mode", type=click.Choice(["uniform_layer", "uniform_filter", "uniform_patch", "max_granularity"]),
              default="uniform_filter", help="[spatial] Mask granularity the search chooses.")  # fmt: skip
@click.option("--patch-size", type=Bounded(int, 2, 4), default=2, help="[spatial] p of the p x p prediction patches (2, 3 or 4).")
@click.option("--ones-range", callback=_ones_range, metavar="LOW-HIGH", help="[spatial] Allowed numbers of ones in a pattern (default: all non-degenerate).")
@click.option("--granularity", type=Bounded(int, 0, 65536), default=4, help="[spatial] Cluster side in patches for patch-level targets (0: whole map).")
@click.option("--top-m", type=Bounded(int, 1, 10**6), default=5, help="[spatial] Options kept per target between levels.")
@click.option("--edge", type=click.Choice(["pad", "compute"]), default="pad", help="[spatial] Edge patches: zero-pad the map (paper) or compute them fully.")
@click.option("--channel-group", type=Bounded(int, 1, 65536), default=1, help="[spatial] Predict a patch zero only when this many consecutive channels agree.")
@click.option("--mask", type=click.Choice(["uniform", "grid", "pooling", "impact"]), default="impact", help="[perforation] How kept positions are chosen.")
@click.option("--interpolation", type=click.Choice(["nearest", "zero", "barycentric"]), default="nearest", help="[perforation] How skipped positions are filled.")
@click.option("--speedup", type=Bounded(float, 1, low_open=True), help="[perforation] Stop once the network is this much faster (by --cost; > 1).")
@click.option("--cost", type=click.Choice(["macs", "measured"]), default="macs",
              help="[perforation, spatial] What a layer's choice saves: MACs, or its compiled time measured on --target "
              "(cached in OUT/layer-timings.json; choices that save no time are never taken).")  # fmt: skip
@click.option("--preset", type=click.Choice(SSC_PRESETS), help="[ssc] (g, p) per layer from a table of the seed, by filter count.")
@click.option("--target-params", type=Bounded(float, 0, 1, low_open=True), metavar="F", help="[ssc] Solve (g, p) per layer to keep this fraction of the parameters, in (0, 1].")
@click.option("--ssc-layer", multiple=True, callback=_ssc_layers, metavar="GLOB=G,P",
              help="[ssc] (g, p) for the layers GLOB matches, first match wins (repeatable; '-' leaves a branch out).")  # fmt: skip
@click.option("--no-pointwise-branch", is_flag=True, help="[ssc] Leave out the interleaved 1x1 branch of k x k convs.")
@click.option("--nondividing", type=click.Choice(["skip", "nearest"]), default="skip",
              help="[ssc] A preset value that divides no channel count: leave the layer dense or take the nearest divisor.")  # fmt: skip
@click.option("--finetune-epochs", type=Bounded(int, 0, 10**6), default=0, help="[perforation, ssc] Fine-tune the rewritten model this many epochs (seeded). "
              "For ssc: the seed's recipe (SGD, batch 128, weight decay 1e-4, lr x0.1 at 40/60/80% of the epochs), "
              "checkpointed in OUT/train-checkpoint.pt so an interrupted run resumes.")  # fmt: skip
@click.option("--finetune-lr", type=Bounded(float, 0, OPTIMIZER_MAX, low_open=True), help="[perforation, ssc] Fine-tuning learning rate [default: 0.01; for ssc a "
              "tenth of the seed's 0.1, which trains from scratch]. A loss or weight that turns NaN or infinite stops "
              "the job with an error naming the epoch and step.")  # fmt: skip
@click.option("--target", default="llvm", callback=target_or_none_callback, help="Compile the result into OUT/artifact for llvm, llvm:CPU or cuda:sm_XX; 'none' skips.")
@click.option("--crossover/--no-crossover", default=True,
              help="Time each transformed layer against its dense layer, compiled for --target at the model's batch "
              "size (cached in OUT/layer-timings.json), and leave dense those that are not faster.")  # fmt: skip
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Search checkpoint (default: OUT/search-checkpoint.json, perforation fine-tuning beside it in finetune-checkpoint.pt; for ssc the training checkpoint, OUT/train-checkpoint.pt).")
@click.option("--resume/--no-resume", default=True, help="Resume from the checkpoint if there is one.")
def optimize_command(
    model, arch, trust_pickle, input_shape, leaf_modules, capture_method, data, seed, technique, epsilon,
    epsilon_kind, metric, layers, batch_size, mode, patch_size, ones_range, granularity, top_m, edge, channel_group,
    mask, interpolation, speedup, cost, preset, target_params, ssc_layer, no_pointwise_branch, nondividing,
    finetune_epochs, finetune_lr, target, crossover, out, checkpoint, resume, normalize=None,
):  # fmt: skip
    """Transform MODEL with --technique, choose its masks or rates within --epsilon (or up to
    --speedup), verify them, and write the plan, the rewritten model, the report and the
    compiled artifact to --out. Examples:

        sparsify lenet.pt2 --mode uniform_filter --data digits --epsilon 0.01 --out out/

        sparsify cq.pt2 --technique perforation --mask impact --speedup 2 --data digits --out out/

        sparsify cq.pt2 --technique ssc --target-params 0.3 --finetune-epochs 5 --data digits --out out/
    """
    from ..pipeline import prepare
    from .progress import ProgressDisplay

    ssc_given = [name for name, value in (("--preset", preset), ("--target-params", target_params),
                                          ("--ssc-layer", ssc_layer or None)) if value is not None]  # fmt: skip
    if technique == "ssc":
        if len(ssc_given) != 1:
            raise click.UsageError(f"--technique ssc needs exactly one of --preset, --target-params, --ssc-layer "
                                   f"(got {', '.join(ssc_given) or 'none'})")  # fmt: skip
        if epsilon is not None or speedup is not None:
            raise click.UsageError("--epsilon and --speedup do not apply to --technique ssc")
    elif ssc_given or no_pointwise_branch:
        raise click.UsageError(f"{', '.join(ssc_given) or '--no-pointwise-branch'} apply only with --technique ssc")

    from ..storage import check_writable_dir, claim_output

    out_dir = Path(out)  # writable and this run's alone before any work; released (and removed if empty) at exit
    click.get_current_context().with_resource(claim_output(out))
    if checkpoint:
        check_writable_dir(Path(checkpoint).absolute().parent, "checkpoint folder")
    prepared = prepare(
        model, normalize=normalize, arch=arch, trust_pickle=trust_pickle, input_shape=input_shape, data=data,
        leaf_modules=leaf_modules, capture_method=capture_method, seed=seed,
    )  # fmt: skip
    checkpoint = checkpoint or out_dir / ("train-checkpoint.pt" if technique == "ssc" else "search-checkpoint.json")
    timer = _crossover_timer(target, out_dir) if crossover else None
    progress = ProgressDisplay()
    try:
        if technique == "ssc":
            result, write_report = _ssc(
                prepared, metric, layers, preset, target_params, ssc_layer, no_pointwise_branch, nondividing,
                finetune_epochs, finetune_lr, seed, checkpoint, resume, timer, progress,
            )  # fmt: skip
        elif technique == "spatial":
            result, write_report = _spatial(
                prepared, 0.01 if epsilon is None else epsilon, epsilon_kind, metric, layers, batch_size, mode,
                patch_size, ones_range, granularity, top_m, edge, channel_group, checkpoint, resume, timer,
                cost, target, out_dir, progress,
            )  # fmt: skip
        else:
            if epsilon is None and speedup is None:
                epsilon = 0.01
            result, write_report = _perforation(
                prepared, epsilon, epsilon_kind, metric, layers, batch_size, mask, interpolation, speedup, cost,
                finetune_epochs, 0.01 if finetune_lr is None else finetune_lr, seed, target, out_dir, checkpoint, resume,
                timer, progress,
            )  # fmt: skip
    except KeyboardInterrupt:
        kind = "training" if technique == "ssc" else "search"
        if not Path(checkpoint).exists():  # stopped before the first record: nothing to resume from
            raise click.ClickException(f"interrupted before the {kind} recorded anything") from None
        raise click.ClickException(f"interrupted: the {kind} checkpoint is saved; run the same command to resume") from None
    finally:
        progress.close()  # the lines of phases an error stopped, before the error
    from ..optimize import save_rewritten

    result.plan.save(out_dir / "plan.json")
    save_rewritten(result.graph_module, prepared.captured.input_shape, out_dir / "model.pt2")
    report = write_report(result, out_dir, title=f"sparsify {model}")
    click.echo(_summary(technique, report))
    if report.get("crossover"):
        checked = report["crossover"]
        left = ", ".join(checked["left_dense"]) or "none"
        click.echo(f"crossover on {checked['target']}: {len(checked['layers'])} transformed layer(s) timed, "
                   f"left dense as not faster: {left}")  # fmt: skip
    job = f"job {result.seconds:.1f} s" if technique == "ssc" else f"search {result.search.seconds:.1f} s"
    click.echo(f"{job}; wrote plan.json, model.pt2, report.md, report.json to {out_dir}")
    if target != "none":
        from ..codegen.compile import compile_graph

        with progress:
            compiled = compile_graph(
                result.graph_module, prepared.captured.input_shape, out_dir / "artifact", target=target,
                check_inputs=prepared.data.calib.x[:64], plan={"path": "../plan.json", "technique": technique},
                progress=progress,
                extra_files={name: out_dir / name for name in ("report.md", "report.json")},  # what it was chosen for
            )  # fmt: skip
        check = "not run here" if compiled.max_abs_diff is None else f"max |diff| vs torch {compiled.max_abs_diff:.2e}"
        click.echo(f"compiled for {target} into {out_dir / 'artifact'} ({check}); manifest sha256 "
                   f"{compiled.manifest_sha256} (pin it with sparsify run --expect-sha256)")  # fmt: skip
    for warning in report["warnings"]:  # last, where they are read: a budget not kept on test, a one-class model
        click.echo(f"warning: {warning}", err=True)


def _spatial(prepared, epsilon, epsilon_kind, metric, layers, batch_size, mode, patch_size, ones_range, granularity,
             top_m, edge, channel_group, checkpoint, resume, timer, cost, target, out_dir, progress):  # fmt: skip
    from ..optimize import optimize_spatial
    from ..passes.spatial import SpatialConfig
    from ..report.spatial import write_report
    from ..search.spatial import SearchConfig

    spatial = SpatialConfig(patch_size=patch_size, edge=edge, channel_group=channel_group, layers=layers)
    search = SearchConfig(
        mode=mode, epsilon=epsilon, epsilon_kind=epsilon_kind, ones_range=ones_range,
        granularity=granularity, top_m=top_m, batch_size=batch_size, cost=cost,
    )  # fmt: skip
    measured = None
    if cost == "measured":
        from ..search.crossover import LayerTimer

        measured = LayerTimer(target="llvm" if target == "none" else target, cache=out_dir / "layer-timings.json")
    result = optimize_spatial(prepared, spatial, search, metric=metric, checkpoint=checkpoint, resume=resume,
                              progress=progress, crossover=timer, measured=measured)  # fmt: skip
    return result, write_report


def _perforation(prepared, epsilon, epsilon_kind, metric, layers, batch_size, mask, interpolation, speedup, cost,
                 finetune_epochs, finetune_lr, seed, target, out_dir, checkpoint, resume, timer, progress):  # fmt: skip
    from ..optimize.perforation import optimize_perforation
    from ..passes.perforation import PerforationConfig
    from ..report.perforation import write_report
    from ..search.perforation import RateSearchConfig
    from ..training import TrainConfig

    perforation = PerforationConfig(interpolation=interpolation, layers=layers, seed=seed)
    search = RateSearchConfig(mask=mask, cost=cost, speedup=speedup, epsilon=epsilon, epsilon_kind=epsilon_kind,
                              batch_size=batch_size, seed=seed)  # fmt: skip
    finetune = TrainConfig(epochs=finetune_epochs, lr=finetune_lr, seed=seed) if finetune_epochs > 0 else None
    measured = None
    if cost == "measured":
        from ..search.crossover import LayerTimer

        measured = LayerTimer(target="llvm" if target == "none" else target, cache=out_dir / "layer-timings.json")
    result = optimize_perforation(
        prepared, perforation, search, metric=metric, finetune=finetune, measured=measured, checkpoint=checkpoint,
        resume=resume, progress=progress, crossover=timer,
    )  # fmt: skip
    return result, write_report


def _ssc(prepared, metric, layers, preset, target_params, ssc_layer, no_pointwise_branch, nondividing,
         finetune_epochs, finetune_lr, seed, checkpoint, resume, timer, progress):  # fmt: skip
    from ..errors import TrainingDiverged
    from ..optimize.ssc import optimize_ssc
    from ..passes.ssc import SSCConfig
    from ..report.ssc import write_report
    from ..training import FINETUNE_LR, TrainConfig

    config = SSCConfig(per_layer=ssc_layer, preset=preset, target_fraction=target_params,
                       pointwise_branch=not no_pointwise_branch, nondividing=nondividing, layers=layers)  # fmt: skip
    finetune = None
    if finetune_epochs > 0:
        lr = FINETUNE_LR if finetune_lr is None else finetune_lr
        finetune = TrainConfig.finetune_recipe(finetune_epochs, seed, lr)
    if not resume and Path(checkpoint).exists():
        Path(checkpoint).unlink()
    try:
        result = optimize_ssc(prepared, config, finetune, metric=metric, checkpoint=checkpoint, crossover=timer,
                              progress=progress)  # fmt: skip
    except TrainingDiverged as error:
        # Another lr is another run: the checkpoint of this one's finite epochs would be refused.
        kept = error.kept_epoch
        again = f" and --no-resume ({checkpoint} holds epoch {kept} of this run)" if kept else ""
        raise error.reworded("fine-tuning", f"a smaller --finetune-lr{again}") from None
    return result, write_report


def _crossover_timer(target: str, out_dir: Path):
    """Where the crossover rule times layers: the artifact's target, if it can run here."""
    if target == "none":
        return None
    from ..codegen.target import target_spec
    from ..search.crossover import LayerTimer

    if target_spec(target)["kind"] == "cuda":
        import tvm

        if not tvm.cuda(0).exist:
            click.echo(f"note: no GPU here to time {target} layers on; the crossover rule is not applied", err=True)
            return None
    return LayerTimer(target=target, cache=out_dir / "layer-timings.json")


def _summary(technique: str, report: dict) -> str:
    acc, name = report["accuracy"], report["metric_name"]
    final = list(acc["test"])[-1]  # sparse, perforated or finetuned
    change = (f"{name} calib {100 * acc['calib']['dense']:.2f}% -> {100 * acc['calib'][final]:.2f}%, "
              f"test {100 * acc['test']['dense']:.2f}% -> {100 * acc['test'][final]:.2f}%")  # fmt: skip
    if technique == "ssc":
        before = f"{name} test {100 * acc['test']['dense']:.2f}% dense, {100 * acc['test']['ssc']:.2f}% SSC before training"
        after = f", {100 * acc['test']['finetuned']:.2f}% after" if "finetuned" in acc["test"] else ""
        return (f"ssc: {100 * report['params']['fraction']:.1f}% of parameters, {100 * report['macs']['fraction']:.1f}% "
                f"of MACs; {before}{after}")  # fmt: skip
    if technique == "spatial":
        mode = report["plan"]["search"]["mode"]
        return f"spatial {mode}: {100 * report['macs']['saved_fraction_test']:.1f}% of MACs saved on the test split; {change}"
    return f"perforation: {report['macs']['speedup']:.2f}x fewer MACs ({100 * report['macs']['saved_fraction']:.1f}% saved); {change}"
