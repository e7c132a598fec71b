"""``sparsify [optimize] MODEL``: the main job (choose masks or rates under an accuracy budget
or speed target, verify, write plan, rewritten model, report and compiled artifact). It is the
default command; ``--technique`` picks what is inserted, and each registered technique adds its
own options (``sparsify_cnn.technique``)."""

from __future__ import annotations

from pathlib import Path

import click

from ..option_types import Bounded
from ..technique import techniques
from .options import OPTIMIZER_MAX, data_option, model_options, seed_option, target_or_none_callback

OPTIMIZE = techniques("optimize")


def technique_options(command):
    """Add every registered technique's own options to ``command``."""
    for technique in reversed(OPTIMIZE):
        for option in reversed(technique.options):
            command = option(command)
    return command


@click.command("optimize")
@model_options
@data_option(default="digits")
@seed_option
@click.option("--technique", type=click.Choice([t.name for t in OPTIMIZE]), default="spatial",
              help=f"What to insert: {', '.join(f'{t.name} ({t.summary})' for t in OPTIMIZE)}.")  # fmt: skip
@click.option("--epsilon", type=Bounded(float, 0, 1, high_open=True), help="Largest accuracy loss allowed on the calibration split, in [0, 1) [default: 0.01; "
              "none for perforation with --speedup].")  # fmt: skip
@click.option("--epsilon-kind", type=click.Choice(["absolute", "relative"]), default="absolute", help="Epsilon in accuracy points or relative to the dense accuracy.")
@click.option("--metric", type=click.Choice(["auto", "top1", "agreement"]), default="auto", help="top1 against labels, agreement with the dense model; auto picks by the data.")
@click.option("--layers", multiple=True, metavar="GLOB", help="Layers to transform (repeatable; default: every layer the technique can take).")
@click.option("--batch-size", type=Bounded(int, 1, 65536), default=256, help="Images per forward pass during the search.")
@click.option("--cost", type=click.Choice(["macs", "measured"]), default="macs",
              help="[perforation, spatial] What a layer's choice saves: MACs, or its compiled time measured on --target "
              "(cached in OUT/layer-timings.json; choices that save no time are never taken).")  # fmt: skip
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
@click.option("--latency/--no-latency", default=True,
              help="After compiling, time the artifact end to end against the dense model on eager PyTorch and ONNX "
              "Runtime (where installed) on this machine: the last lines, and OUT/latency.json.")  # fmt: skip
@technique_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Search checkpoint (default: OUT/search-checkpoint.json, perforation fine-tuning beside it in finetune-checkpoint.pt; for ssc the training checkpoint, OUT/train-checkpoint.pt).")
@click.option("--resume/--no-resume", default=True, help="Resume from the checkpoint if there is one.")
def optimize_command(**options):
    """Transform MODEL with --technique, choose its masks or rates within --epsilon (or up to
    --speedup), verify them, and write the plan, the rewritten model, the report and the
    compiled artifact to --out. Examples:

        sparsify lenet.pt2 --mode uniform_filter --data digits --epsilon 0.01 --out out/

        sparsify cq.pt2 --technique perforation --mask impact --speedup 2 --data digits --out out/

        sparsify cq.pt2 --technique ssc --target-params 0.3 --finetune-epochs 5 --data digits --out out/
    """
    from .. import storage
    from ..job import JobContext, run
    from ..pipeline import prepare
    from ..progress import PhaseTimes
    from ..technique import get
    from .progress import ProgressDisplay

    technique = get(options["technique"], stage="optimize")
    _check_options(technique, options)
    from ..storage import check_writable_dir, claim_output

    world = _join_ranks(technique)
    out_dir = Path(options["out"])  # writable and this run's alone before any work; released (and removed if empty) at exit
    checkpoint = options["checkpoint"]
    if world.is_main:  # the other ranks write nothing
        click.get_current_context().with_resource(claim_output(options["out"]))  # the string: "" is refused
        if checkpoint:
            check_writable_dir(Path(checkpoint).absolute().parent, "checkpoint folder")
    times = PhaseTimes()
    with times.span("load and capture"):
        prepared = prepare(
            options["model"], normalize=options.get("normalize"), arch=options["arch"], trust_pickle=options["trust_pickle"],
            input_shape=options["input_shape"], data=options["data"], leaf_modules=options["leaf_modules"],
            capture_method=options["capture_method"], seed=options["seed"],
        )  # fmt: skip
    checkpoint = Path(checkpoint) if checkpoint else out_dir / technique.checkpoint_name
    target = options["target"]
    timer = _crossover_timer(target, out_dir) if options["crossover"] and world.is_main else None
    progress = ProgressDisplay() if world.is_main else None
    context = JobContext(out_dir=out_dir, checkpoint=checkpoint, resume=options["resume"], crossover=timer,
                         progress=progress, world=world)  # fmt: skip
    try:
        result, write_report = run(technique.name, prepared, options, context)
    except KeyboardInterrupt:
        kind = technique.checkpoint_kind
        if not checkpoint.exists():  # stopped before the first record: nothing to resume from
            raise click.ClickException(f"interrupted before the {kind} recorded anything") from None
        raise click.ClickException(f"interrupted: the {kind} checkpoint is saved; run the same command to resume") from None
    finally:
        if progress is not None:
            progress.close()  # the lines of phases an error stopped, before the error
    if not world.is_main:  # its share of the search is done; the main rank writes the results
        return
    from ..job import save_rewritten

    times.update(result.phases)
    with times.span("write outputs"):
        result.plan.save(out_dir / "plan.json")
        save_rewritten(result.graph_module, prepared.captured.input_shape, out_dir / "model.pt2")
        report = write_report(result, out_dir, title=f"sparsify {options['model']}")
    click.echo(technique.function("summary_line")(report))
    if report.get("crossover"):
        checked = report["crossover"]
        left = ", ".join(checked["left_dense"]) or "none"
        kept = checked.get("kept_for_budget")
        beat_eager = sum(row.get("speedup_vs_fastest", row["speedup"]) > 1 for row in checked["layers"])
        click.echo(f"crossover on {checked['target']}: {len(checked['layers'])} transformed layer(s) timed, "
                   f"{beat_eager} faster than the faster of this tool's and eager PyTorch's dense layer; "
                   f"left dense as not faster: {left}" +
                   (f"; kept though not faster, for the accuracy budget: {', '.join(kept)}" if kept else ""))  # fmt: skip
    click.echo(f"job {result.seconds:.1f} s; wrote plan.json, model.pt2, report.md, report.json to {out_dir}")
    if target != "none":
        from ..codegen.compile import compile_graph

        with progress:
            compiled = compile_graph(
                result.graph_module, prepared.captured.input_shape, out_dir / "artifact", target=target,
                check_inputs=prepared.data.calib.x[:64], plan={"path": "../plan.json", "technique": technique.name},
                progress=progress, times=times,
                extra_files={name: out_dir / name for name in ("report.md", "report.json")},  # what it was chosen for
            )  # fmt: skip
        check = "not run here" if compiled.max_abs_diff is None else \
            f"max |diff| vs torch {compiled.max_abs_diff:.2e}{compiled.threshold_note}"  # fmt: skip
        click.echo(f"compiled for {target} into {out_dir / 'artifact'} ({check}); manifest sha256 "
                   f"{compiled.manifest_sha256} (pin it with sparsify run --expect-sha256)")  # fmt: skip
    click.echo(f"time by phase: {times.line()} (phases.json)")
    if target != "none" and options["latency"] and compiled.max_abs_diff is not None:  # the artifact runs here
        with times.span("latency"):
            _report_latency(prepared, out_dir)  # the last lines: the artifact against what users run
    storage.write_json(out_dir / "phases.json", {"seconds": times.seconds, "ranks": world.size})
    for warning in report["warnings"]:  # last, where they are read: a budget not kept on test, a one-class model
        click.echo(f"warning: {warning}", err=True)


def _join_ranks(technique):
    """This process's rank when torchrun started several (joined now), else one process."""
    from ..distributed import environment_world, join, leave

    if not environment_world().distributed:
        return join()
    if not technique.distributed:
        runs = ", ".join(t.name for t in OPTIMIZE if t.distributed)
        raise click.UsageError(f"--technique {technique.name} runs in one process, not under torchrun "
                               f"(data-parallel: {runs})")  # fmt: skip
    world = join()
    click.get_current_context().call_on_close(leave)
    return world


def _report_latency(prepared, out_dir: Path) -> None:
    """Time the artifact against the dense model on what users run instead; print and save it."""
    import json

    import torch

    from ..bench.latency import end_to_end, summary_lines
    from ..transform.capture import set_eval

    batch = prepared.captured.input_shape[0]
    images = prepared.data.calib.x
    x = images[:batch] if len(images) >= batch else images.repeat(-(-batch // len(images)), *[1] * (images.dim() - 1))[:batch]
    dense = set_eval(prepared.captured.graph_module)  # as deployed: batch norm with its running statistics
    timed = end_to_end(out_dir / "artifact", dense, x)
    threads = torch.get_num_threads()
    for line in summary_lines(timed, batch, threads):
        click.echo(line)
    record = {"batch": batch, "threads": threads, "candidates": [entry.to_dict() for entry in timed]}
    (out_dir / "latency.json").write_text(json.dumps(record, indent=2) + "\n")


def _check_options(technique, options: dict) -> None:
    """Options given on the command line that ``technique`` does not take are usage errors."""
    ctx = click.get_current_context()
    given = {name for name in options if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)}
    flag = {p.name: p.opts[0] for p in ctx.command.params}
    shared = [flag[n] for n in sorted(given) if n in _shared_names() and n not in technique.shared_options]
    if shared:
        verb = "does" if len(shared) == 1 else "do"
        raise click.UsageError(f"{' and '.join(shared)} {verb} not apply to --technique {technique.name}")
    for other in OPTIMIZE:
        if other is not technique:
            foreign = [flag[p.name] for p in _own_params(other) if p.name in given]
            if foreign:
                verb = "applies" if len(foreign) == 1 else "apply"
                raise click.UsageError(f"{', '.join(foreign)} {verb} only with --technique {other.name}")
    if technique.check_options:
        technique.function("check_options")(options, given)


def _own_params(technique) -> list[click.Parameter]:
    """The click parameters of ``technique``'s own options."""
    params = []
    for option in technique.options:
        params.extend(option(click.Command("probe")).params)
    return params


def _shared_names() -> set[str]:
    """The main job's options that only the techniques listing them take (the rest all take)."""
    return {name for t in OPTIMIZE for name in t.shared_options}


def _crossover_timer(target: str, out_dir: Path):
    """Where the crossover rule times layers: the artifact's target, if it can run here."""
    if target == "none":
        return None
    from ..bench.crossover import LayerTimer
    from ..codegen.target import target_spec

    if target_spec(target)["kind"] == "cuda":
        import tvm

        if not tvm.cuda(0).exist:
            click.echo(f"note: no GPU here to time {target} layers on; the crossover rule is not applied", err=True)
            return None
    return LayerTimer(target=target, cache=out_dir / "layer-timings.json")
