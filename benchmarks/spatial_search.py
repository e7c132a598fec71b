"""The Spatial mask search on a trained CIFAR-quick (CQ) network, every mode, one run:
MACs saved, accuracy loss on calibration and test, search time, evaluations, and the work
against the seed's naive cost (options x a full forward pass).

    python benchmarks/spatial_search.py --epochs 8 --epsilon 0.01
"""

from __future__ import annotations

import argparse
import time

import torch

from sparsify_cnn import models
from sparsify_cnn.data import load_data
from sparsify_cnn.optimize import optimize_spatial
from sparsify_cnn.pipeline import Prepared
from sparsify_cnn.model_io import LoadedModel
from sparsify_cnn.search.spatial import MODES, SearchConfig
from sparsify_cnn.training import TrainConfig, train
from sparsify_cnn.transform.capture import capture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cq")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--epsilon", type=float, default=0.01)
    parser.add_argument("--granularity", type=int, default=4)
    parser.add_argument("--top-m", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", nargs="*", default=list(MODES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    entry = models.get_entry(args.model)
    data = load_data("digits", entry.input_shape)
    model = entry.factory(num_classes=data.num_classes)
    start = time.perf_counter()
    train(model, data, TrainConfig(epochs=args.epochs, seed=0))
    print(f"{args.model} trained on digits {entry.input_shape} in {time.perf_counter() - start:.1f} s; "
          f"epsilon {args.epsilon} absolute, granularity {args.granularity}, top-M {args.top_m}, "
          f"{args.threads} threads")  # fmt: skip
    prepared = Prepared(LoadedModel(model, args.model, "zoo", entry.input_shape), capture(model, (1, *entry.input_shape)), data)
    print("| mode | MACs saved (test) | calib loss (pts) | test loss (pts) | search s | options (seed's Omega) "
          "| evaluated | suffix images | work / (Omega x F) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode in args.modes:
        config = SearchConfig(mode=mode, epsilon=args.epsilon, granularity=args.granularity, top_m=args.top_m)
        result = optimize_spatial(prepared, search=config)
        saved = 1 - result.sparse.total_performed_macs / result.dense.total_macs
        loss = {s: 100 * (result.scores[s]["dense"].value - result.scores[s]["sparse"].value) for s in ("calib", "test")}
        found = result.search
        print(f"| {mode} | {100 * saved:.1f}% | {loss['calib']:.2f} | {loss['test']:.2f} | {found.seconds:.1f} | "
              f"{found.options:,} | {found.candidates:,} | {found.suffix_images:,} | {found.work_ratio:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
