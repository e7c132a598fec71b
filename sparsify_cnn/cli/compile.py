"""``sparsify compile`` and ``sparsify run``: build an artifact, run one."""

from __future__ import annotations

import click

from .options import data_option, model_options, seed_option


@click.command("compile")
@model_options
@data_option(default=None)
@seed_option
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False), help="Apply this plan (from a search) before compiling.")
@click.option("--target", default="llvm", help="llvm (this CPU), llvm:CPU, or cuda:sm_XX (built, not run, without a GPU).")
@click.option("--tune-trials", default=0, help="MetaSchedule trials in all (0: default schedules, or the best already in --records).")
@click.option("--records", type=click.Path(file_okay=False), help="Tuning records directory, reused across runs (default with tuning: tuning-records).")
@click.option("--check-images", default=64, help="Calibration images the compiled model is checked on against torch.")
@click.option("--dump-ir", type=click.Path(file_okay=False), help="Write the IR before and after every pipeline step here.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Artifact directory.")
def compile_command(
    model, arch, trust_pickle, input_shape, leaf_modules, capture_method, data, seed, plan_path, target,
    tune_trials, records, check_images, dump_ir, out, normalize=None,
):  # fmt: skip
    """Compile MODEL with Apache TVM into a deployable artifact in --out, checked against
    torch on calibration inputs (with --data). The batch size is --input-shape's N.

        sparsify compile lenet.pt2 --data digits --out artifact/
    """
    from ..codegen.compile import compile_graph
    from ..pipeline import prepare
    from ..plan import Plan
    from .progress import ProgressDisplay

    prepared = prepare(
        model, normalize=normalize, arch=arch, trust_pickle=trust_pickle, input_shape=input_shape, data=data,
        leaf_modules=leaf_modules, capture_method=capture_method, seed=seed,
    )  # fmt: skip
    gm = prepared.captured.graph_module
    plan = None
    if plan_path:
        plan = Plan.load(plan_path)
        gm = plan.apply(gm).graph_module
    images = prepared.data.calib.x[:check_images] if prepared.data is not None else None
    with ProgressDisplay() as progress:
        result = compile_graph(
            gm, prepared.captured.input_shape, out, target=target, check_inputs=images,
            plan={"path": plan_path, "technique": plan.technique} if plan else None, dump_ir=dump_ir,
            tune_trials=tune_trials, records=records, progress=progress,
        )  # fmt: skip
    check = result.manifest["check"]
    if result.max_abs_diff is None:
        click.echo(f"compiled for {target}; not run here (no check against torch)")
    else:
        click.echo(
            f"compiled for {result.manifest['target'].get('mcpu', target)}; matches torch on {check['images']} "
            f"images: max |diff| {result.max_abs_diff:.2e} ({result.relative_diff:.2e} of the output scale)"
        )
    click.echo(f"wrote {', '.join(result.manifest['files'])}, manifest.json to {out}")


@click.command("run")
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False), help="Input images (.npy).")
@click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False), help="Where to write the outputs (.npy).")
def run_command(artifact, input_path, output_path):
    """Run a compiled ARTIFACT on --input and save the outputs to --output (TVM runtime only)."""
    import numpy as np

    from ..errors import InputError
    from ..runtime import ArtifactError, load

    try:
        x = np.load(input_path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read input '{input_path}' as .npy: {error}") from error
    try:
        y = load(artifact)(x)
    except ArtifactError as error:
        raise InputError(str(error)) from error
    np.save(output_path, y)
    click.echo(f"wrote {output_path} {tuple(y.shape)}")
