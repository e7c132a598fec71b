"""The Spatial mask search on a trained CIFAR-quick (CQ) network, every mode, one run:
MACs saved, accuracy loss on calibration and test, search time, evaluations, and the work
against the seed's naive cost (options x a full forward pass).

    python benchmarks/spatial_search.py --epochs 8 --epsilon 0.01
    python benchmarks/spatial_search.py --search-images all 90 --modes max_granularity  # a sample against exact
    python benchmarks/spatial_search.py --first-levels exact first_order                 # estimates against exact
"""

from __future__ import annotations

import argparse
import itertools

from _setup import trained_zoo_model

from sparsify_cnn.techniques.spatial.job import optimize_spatial
from sparsify_cnn.techniques.spatial.search import MODES, SearchConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cq")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--epsilon", type=float, default=0.01)
    parser.add_argument("--granularity", type=int, default=4)
    parser.add_argument("--top-m", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", nargs="*", default=list(MODES))
    parser.add_argument("--first-levels", nargs="*", default=["exact"], choices=["exact", "first_order"],
                        help="how the first level scores options, one row each")
    parser.add_argument("--search-images", nargs="*", default=["all"],
                        help="calibration images each layer's options are scored on, one row each ('all': exact)")
    parser.add_argument("--max-risk", type=float,
                        help="per-layer risk budget (SearchConfig.max_risk; default: none)")
    args = parser.parse_args()
    prepared, seconds = trained_zoo_model(args.model, args.epochs, threads=args.threads)
    print(f"{args.model} trained on digits {prepared.data.input_shape} in {seconds:.1f} s; "
          f"epsilon {args.epsilon} absolute, granularity {args.granularity}, top-M {args.top_m}, "
          f"{args.threads} threads")  # fmt: skip
    print("| mode | first level | layer images | max risk | MACs saved (test) | calib loss (pts) | test loss (pts) | search s "
          "| options (seed's Omega) | evaluated | suffix images | work (passes) | work / (Omega x F) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mode in args.modes:
        for first_level, images in itertools.product(args.first_levels, args.search_images):
            sample = None if images == "all" else int(images)
            config = SearchConfig(mode=mode, epsilon=args.epsilon, granularity=args.granularity, top_m=args.top_m,
                                  search_images=sample, first_level=first_level, max_risk=args.max_risk)  # fmt: skip
            result = optimize_spatial(prepared, search=config)
            saved = 1 - result.sparse.total_performed_macs / result.dense.total_macs
            loss = {s: 100 * (result.scores[s]["dense"].value - result.scores[s]["sparse"].value)
                    for s in ("calib", "test")}  # fmt: skip
            found = result.search
            max_risk = result.plan.search.get("max_risk")
            print(f"| {mode} | {first_level} | {found.search_images} | {max_risk or '-'} | {100 * saved:.1f}% | {loss['calib']:.2f} | {loss['test']:.2f} | "
                  f"{found.seconds:.1f} | {found.options:,} | {found.candidates:,} | {found.suffix_images:,} | "
                  f"{found.work:.1f} | {found.work_ratio:.3f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
