"""The Spatial technique on the command line: its options of the main job, and the job run
from them. Imports no torch until the job runs (``sparsify --help`` reads the options)."""

from __future__ import annotations

import click

from ...option_types import Bounded, MemorySize

MODES = ("uniform_layer", "uniform_filter", "uniform_patch", "max_granularity")  # search_config.MODES


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


OPTIONS = (
    click.option("--mode", type=click.Choice(MODES), default="uniform_filter", help="[spatial] Mask granularity the search chooses."),
    click.option("--patch-size", type=Bounded(int, 2, 4), default=2, help="[spatial] p of the p x p prediction patches (2, 3 or 4)."),
    click.option("--ones-range", callback=_ones_range, metavar="LOW-HIGH", help="[spatial] Allowed numbers of ones in a pattern (default: all non-degenerate)."),
    click.option("--granularity", type=Bounded(int, 0, 65536), default=4, help="[spatial] Cluster side in patches for patch-level targets (0: whole map)."),
    click.option("--top-m", type=Bounded(int, 1, 10**6), default=5, help="[spatial] Options kept per target between levels."),
    click.option("--edge", type=click.Choice(["pad", "compute"]), default="pad", help="[spatial] Edge patches: zero-pad the map (paper) or compute them fully."),
    click.option("--channel-group", type=Bounded(int, 1, 65536), default=1, help="[spatial] Predict a patch zero only when this many consecutive channels agree."),
    click.option("--first-level", type=click.Choice(["exact", "first-order"]), default="exact",
                 help="[spatial] How the first level scores each option: exact (the network runs it) or first-order "
                 "(each image's margin estimated from one gradient pass per layer). Later levels and combining "
                 "layers run the network either way, so epsilon holds."),
    click.option("--search-images", type=Bounded(int, 1, 10**9), metavar="N",
                 help="[spatial] Score each layer's options on a seeded sample of N calibration images; combining "
                 "layers and the final check use every image, so epsilon holds on all. [default: every image]"),
    click.option("--max-risk", type=Bounded(float, 0.0, 1.0, low_open=True), metavar="R",
                 help="[spatial] Keep a layer option only if it uses up at most this share of the images' margins, "
                 "to first order (an image it flips counts 1): a per-layer budget stricter than epsilon that a "
                 "--search-images sample resolves below one image. [default: none]"),
    click.option("--max-cache-memory", type=MemorySize(), metavar="SIZE",
                 help="[spatial] Most memory the search's dense activations take at once, per rank (512MB, 4GiB). Beyond it "
                 "layers are recorded in groups by extra partial passes; the plan is the same. [default: half of this "
                 "machine's memory, shared by its ranks]"),
)  # fmt: skip
SHARED = ("epsilon", "epsilon_kind", "cost")  # the main job's options it takes besides the universal ones


def run(prepared, options: dict, context):
    from .job import optimize_spatial
    from .report import write_report
    from .rewrite import SpatialConfig
    from .search_config import SearchConfig

    epsilon = 0.01 if options["epsilon"] is None else options["epsilon"]
    spatial = SpatialConfig(patch_size=options["patch_size"], edge=options["edge"],
                            channel_group=options["channel_group"], layers=options["layers"])  # fmt: skip
    search = SearchConfig(
        mode=options["mode"], epsilon=epsilon, epsilon_kind=options["epsilon_kind"], ones_range=options["ones_range"],
        granularity=options["granularity"], top_m=options["top_m"], batch_size=options["batch_size"], cost=options["cost"],
        search_images=options["search_images"], first_level=options["first_level"].replace("-", "_"),
        max_risk=options["max_risk"],
    )  # fmt: skip
    measured = context.measured_timer(options["target"]) if options["cost"] == "measured" else None
    result = optimize_spatial(prepared, spatial, search, metric=options["metric"], checkpoint=context.checkpoint,
                              resume=context.resume, progress=context.progress, crossover=context.crossover,
                              measured=measured, world=context.world,
                              max_cache_bytes=options["max_cache_memory"])  # fmt: skip
    return result, write_report


def summary_line(report: dict) -> str:
    from ...job import accuracy_change

    mode = report["plan"]["search"]["mode"]
    return f"spatial {mode}: {100 * report['macs']['saved_fraction_test']:.1f}% of MACs saved on the test split; {accuracy_change(report)}"

