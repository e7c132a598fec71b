"""``sparsify [optimize] MODEL``: the main job (search masks under an accuracy budget, verify,
write plan, rewritten model and report). It is the default command."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from .options import data_option, model_options, seed_option


def _ones_range(ctx, param, value):
    if value is None:
        return None
    try:
        low, _, high = value.partition("-")
        return (int(low), int(high or low))
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a range such as 1-3") from None


@click.command("optimize")
@model_options
@data_option(default="digits")
@seed_option
@click.option("--technique", type=click.Choice(["spatial"]), default="spatial", help="What to insert: zero prediction (Spatial ops).")
@click.option("--mode", type=click.Choice(["uniform_layer", "uniform_filter", "uniform_patch", "max_granularity"]),
              default="uniform_filter", help="Mask granularity the search chooses.")  # fmt: skip
@click.option("--epsilon", type=float, default=0.01, help="Largest accuracy loss allowed on the calibration split.")
@click.option("--epsilon-kind", type=click.Choice(["absolute", "relative"]), default="absolute", help="Epsilon in accuracy points or relative to the dense accuracy.")
@click.option("--metric", type=click.Choice(["auto", "top1", "agreement"]), default="auto", help="top1 against labels, agreement with the dense model; auto picks by the data.")
@click.option("--patch-size", type=int, default=2, help="p of the p x p prediction patches (2, 3 or 4).")
@click.option("--ones-range", callback=_ones_range, metavar="LOW-HIGH", help="Allowed numbers of ones in a pattern (default: all non-degenerate).")
@click.option("--granularity", type=int, default=4, help="Cluster side in patches for patch-level targets (0: whole map).")
@click.option("--top-m", type=int, default=5, help="Options kept per target between levels.")
@click.option("--edge", type=click.Choice(["pad", "compute"]), default="pad", help="Edge patches: zero-pad the map (paper) or compute them fully.")
@click.option("--channel-group", type=int, default=1, help="Predict a patch zero only when this many consecutive channels agree.")
@click.option("--layers", multiple=True, metavar="GLOB", help="Layers to transform (repeatable; default: every conv that feeds a ReLU).")
@click.option("--batch-size", type=int, default=256, help="Images per forward pass during the search.")
@click.option("--target", default="llvm", help="Compile the result into OUT/artifact for llvm, llvm:CPU or cuda:sm_XX; 'none' skips.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Search checkpoint (default: OUT/search-checkpoint.json).")
@click.option("--resume/--no-resume", default=True, help="Resume from the checkpoint if there is one.")
def optimize_command(
    model, arch, trust_pickle, input_shape, leaf_modules, capture_method, data, seed, technique, mode, epsilon,
    epsilon_kind, metric, patch_size, ones_range, granularity, top_m, edge, channel_group, layers, batch_size,
    target, out, checkpoint, resume,
):  # fmt: skip
    """Find the masks that save the most MACs within --epsilon, verify them, and write the plan,
    the rewritten model, the report and the compiled artifact to --out. Example:

        sparsify lenet.pt2 --mode uniform_filter --data digits --epsilon 0.01 --out out/
    """
    from ..optimize import optimize_spatial, save_rewritten
    from ..passes.spatial import SpatialConfig
    from ..pipeline import prepare
    from ..report.spatial import write_report
    from ..search.spatial import SearchConfig
    from .progress import ProgressLine

    spatial = SpatialConfig(patch_size=patch_size, edge=edge, channel_group=channel_group, layers=layers)
    search = SearchConfig(
        mode=mode, epsilon=epsilon, epsilon_kind=epsilon_kind, ones_range=ones_range,
        granularity=granularity, top_m=top_m, batch_size=batch_size,
    )  # fmt: skip
    prepared = prepare(
        model, arch=arch, trust_pickle=trust_pickle, input_shape=input_shape, data=data,
        leaf_modules=leaf_modules, capture_method=capture_method, seed=seed,
    )  # fmt: skip
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = ProgressLine()
    try:
        result = optimize_spatial(
            prepared, spatial, search, metric=metric,
            checkpoint=checkpoint or out_dir / "search-checkpoint.json", resume=resume, progress=progress,
        )  # fmt: skip
    except KeyboardInterrupt:
        progress.close()
        raise click.ClickException("interrupted: the search checkpoint is saved; run the same command to resume") from None
    progress.close()
    result.plan.save(out_dir / "plan.json")
    save_rewritten(result, out_dir / "model.pt2")
    data_json = write_report(result, out_dir, title=f"sparsify {model}")
    acc, macs = data_json["accuracy"], data_json["macs"]
    click.echo(
        f"{technique} {mode}: {100 * macs['saved_fraction_test']:.1f}% of MACs saved on the test split; "
        f"{data_json['metric_name']} calib {100 * acc['calib']['dense']:.2f}% -> {100 * acc['calib']['sparse']:.2f}%, "
        f"test {100 * acc['test']['dense']:.2f}% -> {100 * acc['test']['sparse']:.2f}%"
    )
    click.echo(f"search {result.search.seconds:.1f} s; wrote plan.json, model.pt2, report.md, report.json to {out_dir}")
    if target != "none":
        from ..codegen.compile import compile_graph

        compiled = compile_graph(
            result.graph_module, prepared.captured.input_shape, out_dir / "artifact", target=target,
            check_inputs=prepared.data.calib.x[:64], plan={"path": "../plan.json", "technique": technique},
        )  # fmt: skip
        for name in ("report.md", "report.json"):  # the artifact carries what it was chosen for
            shutil.copy(out_dir / name, out_dir / "artifact" / name)
        check = "not run here" if compiled.max_abs_diff is None else f"max |diff| vs torch {compiled.max_abs_diff:.2e}"
        click.echo(f"compiled for {target} into {out_dir / 'artifact'} ({check})")
