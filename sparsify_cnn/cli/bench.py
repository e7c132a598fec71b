"""``sparsify bench``: measured speed, theoretical beside measured, dense beside transformed, on
PyTorch eager, torch.compile and TVM."""

from __future__ import annotations

import os
from pathlib import Path

import click

from .options import Bounded, data_option, model_options, seed_option, target_callback


def _ints(ctx, param, value: str) -> tuple[int, ...]:
    try:
        numbers = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got '{value}'") from None
    if not all(1 <= n <= 65536 for n in numbers):
        raise click.BadParameter(f"batch sizes must be positive and at most 65536, got '{value[:40]}'")
    return numbers


def _names(ctx, param, value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@click.command("bench")
@model_options
@data_option(default=None)
@seed_option
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False), help="Bench MODEL with this plan applied, against MODEL dense.")
@click.option("--plan-for-other-model", is_flag=True, help="Apply the plan even though it was made for another model "
              "(another graph, or the same graph with other weights, e.g. retrained); its masks were chosen for that one.")  # fmt: skip
@click.option("--batch", "batches", default="1,32", callback=_ints, help="Batch sizes, comma-separated.")
@click.option("--backends", default="eager,compile,ort,tvm", callback=_names, help="Backends timed: eager, compile (torch.compile), ort (ONNX Runtime; a note where it is not installed), tvm.")
@click.option("--baseline", type=click.Choice(["fastest", "eager", "compile", "ort", "tvm-dense"]), default="fastest",
              help="The dense time that measured speedups divide (fastest: the fastest backend's, this tool's dense code included).")  # fmt: skip
@click.option("--target", default="llvm", callback=target_callback, help="TVM target: llvm (this CPU), llvm:CPU or cuda:sm_XX (needs the GPU here).")
@click.option("--tune-trials", type=Bounded(int, 0, 10**6), default=0, help="MetaSchedule trials per compiled module, dense and transformed alike (0: default schedules).")
@click.option("--records", type=click.Path(file_okay=False), help="Tuning records directory, reused across runs.")
@click.option("--threads", type=Bounded(int, 1, 4096), help="Threads for torch and TVM (default: all cores).")
@click.option("--rounds", type=Bounded(int, 1, 10**6), default=7, help="Timed rounds (the median is reported).")
@click.option("--number", type=Bounded(int, 1, 10**6), default=1, help="Runs per timing (their mean is one timing).")
@click.option("--layers/--no-layers", default=True, help="Also time each transformed layer against its dense layer.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Where to write the table as JSON (default: DIR/bench.json for a DIR, else bench.json).")
def bench_command(
    model, arch, trust_pickle, input_shape, leaf_modules, capture_method, data, seed, plan_path, plan_for_other_model,
    batches, backends, baseline, target, tune_trials, records, threads, rounds, number, layers, json_path, normalize=None,
):  # fmt: skip
    """Time MODEL dense, or the result of a search, end to end and layer by layer, on PyTorch
    eager, torch.compile and TVM, beside the theoretical (MAC) speedups; print the table and
    write it as JSON. MODEL is a model (file or zoo:NAME), or the --out directory of a search
    (its plan re-applied to the model it names), or the artifact directory inside one.

        sparsify bench out/ --batch 1,32 --baseline eager

        sparsify bench cq.pt2 --plan out/plan.json --data digits --tune-trials 64 --records rec/
    """
    if threads is not None:  # before TVM's runtime starts its thread pool
        if threads < 1:
            raise click.BadParameter("must be at least 1", param_hint="--threads")
        os.environ["TVM_NUM_THREADS"] = str(threads)
    import torch

    from ..bench import BenchConfig, TVMSettings, bench, render_markdown
    from ..errors import InputError
    from ..pipeline import prepare
    from ..plan import Plan
    from ..storage import claim_output, write_json

    if threads is not None:
        torch.set_num_threads(threads)
    directory = _search_directory(model)
    plan = None
    if directory is not None:
        if plan_path:
            raise click.UsageError("give either a search directory or --plan, not both")
        plan_path = directory / "plan.json"
    out = Path(json_path) if json_path else (directory / "bench.json" if directory is not None else Path("bench.json"))
    click.get_current_context().with_resource(claim_output(out, inside=False, option="--json"))  # before any timing
    if plan_path:
        plan = Plan.load(plan_path)
    if directory is not None:
        model = plan.model.get("source") or ""
        if not model.startswith("zoo:") and not Path(model).exists():
            raise InputError(f"the plan in '{directory}' was made for model '{model}', which is not found from here; "
                             f"give it as: sparsify bench MODEL --plan {directory / 'plan.json'}")  # fmt: skip
        data = data or plan.data.get("name")
        if input_shape is None and plan.model.get("input_shape"):
            input_shape = tuple(plan.model["input_shape"])
    if tune_trials and "tvm" in backends:  # before any work, not as a note on the TVM rows after it
        from ..codegen.tuning import require_search_packages

        require_search_packages()
    config = BenchConfig(batches=batches, backends=backends, baseline=baseline,
                         tvm=TVMSettings(target, tune_trials, records), rounds=rounds, number=number, layers=layers)  # fmt: skip
    prepared = prepare(
        model, normalize=normalize, arch=arch, trust_pickle=trust_pickle, input_shape=input_shape, data=data,
        leaf_modules=leaf_modules, capture_method=capture_method, seed=seed,
    )  # fmt: skip
    dense = prepared.captured.graph_module
    transformed = plan.apply(dense, for_other_model=plan_for_other_model).graph_module if plan else None
    if prepared.data is not None:
        images = prepared.data.calib.x[: max(batches)]
    else:
        click.echo("note: no --data; timing on random images (data-dependent ops need real ones)", err=True)
        generator = torch.Generator().manual_seed(seed)
        images = torch.randn((max(batches), *prepared.captured.input_shape[1:]), generator=generator)
    from .progress import ProgressDisplay

    with ProgressDisplay() as progress:
        result = bench(dense, images, config, transformed=transformed,
                       label=Path(model).name if directory is None else model, progress=progress)  # fmt: skip
    click.echo(render_markdown(result), nl=False)
    write_json(out, result.to_dict(), indent=1)
    click.echo(f"wrote {out}")


def _search_directory(model: str) -> Path | None:
    """The search output directory that ``model`` names (itself, or the parent of its artifact)."""
    path = Path(model)
    if not path.is_dir():
        return None
    if (path / "plan.json").exists():
        return path
    if (path / "manifest.json").exists() and (path.parent / "plan.json").exists():
        return path.parent
    from ..errors import InputError

    raise InputError(f"'{model}' is a directory without plan.json: give a model file, zoo:NAME, or the --out "
                     f"directory of a search")  # fmt: skip
