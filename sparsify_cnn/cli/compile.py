"""``sparsify compile`` and ``sparsify run``: build an artifact, run one."""

from __future__ import annotations

import click

from .options import Bounded, data_option, model_options, seed_option, target_callback


@click.command("compile")
@model_options
@data_option(default=None)
@seed_option
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False), help="Apply this plan (from a search) before compiling.")
@click.option("--plan-for-other-model", is_flag=True, help="Apply --plan even though it was made for another model "
              "(another graph, or the same graph with other weights, e.g. retrained); its masks were chosen for that one.")  # fmt: skip
@click.option("--target", default="llvm", callback=target_callback, help="llvm (this CPU), llvm:CPU, or cuda:sm_XX (built, not run, without a GPU).")
@click.option("--tune-trials", type=Bounded(int, 0, 10**6), default=0, help="MetaSchedule trials in all (0: default schedules, or the best already in --records).")
@click.option("--records", type=click.Path(file_okay=False), help="Tuning records directory, reused across runs (default with tuning: tuning-records).")
@click.option("--rpc-tracker", metavar="HOST:PORT", help="Measure tuning trials on the deployment machines: TVM RPC servers "
              "registered with this tracker (python -m tvm.exec.rpc_server --tracker HOST:PORT --key K).")  # fmt: skip
@click.option("--rpc-key", metavar="K", help="The key those servers registered under (with --rpc-tracker).")
@click.option("--check-images", type=Bounded(int, 0, 65536), default=64, help="Calibration images the compiled model is checked on against torch (0: none).")
@click.option("--dump-ir", type=click.Path(file_okay=False), help="Write the IR before and after every pipeline step here.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Artifact directory.")
def compile_command(
    model, arch, trust_pickle, input_shape, leaf_modules, capture_method, data, seed, plan_path, plan_for_other_model,
    target, tune_trials, records, rpc_tracker, rpc_key, check_images, dump_ir, out, normalize=None,
):  # fmt: skip
    """Compile MODEL with Apache TVM into a deployable artifact in --out, checked against
    torch on calibration inputs (with --data). The batch size is --input-shape's N.

        sparsify compile lenet.pt2 --data digits --out artifact/

        sparsify compile m.pt2 --tune-trials 512 --rpc-tracker 10.0.0.5:9190 --rpc-key epyc --out artifact/
    """
    from ..codegen.compile import compile_graph
    from ..pipeline import prepare
    from ..plan import Plan
    from ..storage import claim_output
    from .progress import ProgressDisplay

    remote = _remote(rpc_tracker, rpc_key, tune_trials, records)
    # The artifact folder holds exactly its manifest's files: its lock is a sibling, .ARTIFACT.lock.
    click.get_current_context().with_resource(claim_output(out, inside=False))
    plan = Plan.load(plan_path) if plan_path else None  # a broken plan stops before the model loads
    prepared = prepare(
        model, normalize=normalize, arch=arch, trust_pickle=trust_pickle, input_shape=input_shape, data=data,
        leaf_modules=leaf_modules, capture_method=capture_method, seed=seed,
    )  # fmt: skip
    gm = prepared.captured.graph_module
    if plan is not None:
        gm = plan.apply(gm, for_other_model=plan_for_other_model).graph_module
    images = prepared.data.calib.x[:check_images] if prepared.data is not None else None
    with ProgressDisplay() as progress:
        result = compile_graph(
            gm, prepared.captured.input_shape, out, target=target, check_inputs=images,
            plan={"path": plan_path, "technique": plan.technique} if plan else None, dump_ir=dump_ir,
            tune_trials=tune_trials, records=records, progress=progress, remote=remote,
        )  # fmt: skip
    check = result.manifest["check"]
    if result.max_abs_diff is None:
        click.echo(f"compiled for {target}; not run here (no check against torch)")
    else:
        click.echo(
            f"compiled for {result.manifest['target'].get('mcpu', target)}; matches torch on {check['images']} "
            f"images: max |diff| {result.max_abs_diff:.2e} ({result.relative_diff:.2e} of the output scale"
            f"{result.threshold_note})"
        )
    click.echo(f"wrote {', '.join(result.manifest['files'])}, manifest.json to {out}")
    click.echo(f"manifest sha256 {result.manifest_sha256} (pin it with sparsify run --expect-sha256)")


@click.command("run")
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option("--input", "input_path", required=True, type=click.Path(dir_okay=False), help="Input images (.npy).")
@click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False),
              help="Where to write the outputs (.npy), exactly this path.")  # fmt: skip
@click.option("--expect-sha256", metavar="HEX",
              help="Refuse the artifact unless its manifest.json has this sha256 (sparsify compile prints it).")
def run_command(artifact, input_path, output_path, expect_sha256):
    """Run a compiled ARTIFACT on --input and save the outputs to --output (TVM runtime only).

        sparsify run artifact/ --input x.npy --output y.npy --expect-sha256 3f2a...
    """
    from pathlib import Path

    import numpy as np

    from ..errors import InputError
    from ..runtime import ArtifactError, load
    from ..storage import atomic_path

    try:
        model = load(artifact, expected_sha256=expect_sha256)
        if Path(output_path).absolute().parent.resolve() == Path(artifact).resolve():
            raise InputError(f"--output '{output_path}' is inside the artifact '{artifact}': an artifact holds "
                             "exactly its manifest's files; write the outputs elsewhere")  # fmt: skip
        x = _read_input(input_path, model.input["shape"], model.input["dtype"])
        y = model(x)
    except ArtifactError as error:
        raise InputError(str(error)) from error
    with atomic_path(output_path) as tmp, open(tmp, "wb") as f:
        np.save(f, y)  # to a handle: np.save given a path would append .npy to it
    click.echo(f"wrote {output_path} {tuple(y.shape)}")


def _read_input(path: str, shape, dtype):
    """The .npy array at ``path``, checked against the artifact's input before it is allocated."""
    from ..errors import InputError
    from ..npyfile import read_npy
    from ..plainfile import NotPlainFile, open_plain

    label = f"input '{path}'"
    try:
        with open_plain(path) as (f, size):
            return read_npy(f, size, label, InputError, shape, dtype, wanted="the artifact was compiled for")
    except NotPlainFile:
        raise InputError(f"{label} is not a regular file") from None
    except OSError as error:
        raise InputError(f"cannot read {label}: {error.strerror or error}") from error


def _remote(tracker: str | None, key: str | None, tune_trials: int, records: str | None):
    """The deployment machines tuning measures on (``--rpc-tracker``), or None: this machine."""
    if tracker is None:
        if key is not None:
            raise click.UsageError("--rpc-key needs --rpc-tracker")
        return None
    if not tune_trials and records is None:
        raise click.UsageError("--rpc-tracker measures tuning trials: give --tune-trials (or --records)")
    from ..codegen.remote import RemoteDevice

    return RemoteDevice.parse(tracker, key)
