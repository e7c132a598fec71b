"""The greedy perforation curve on a trained network (default CIFAR-quick, CQ) with the
built-in digits: theoretical speedup against accuracy loss, without and with fine-tuning, for
each mask type, one run.

    python benchmarks/perforation_greedy.py --model cq --epochs 8 --finetune-epochs 2
"""

from __future__ import annotations

import argparse

from _setup import trained_zoo_model

from sparsify_cnn.evaluate import evaluate
from sparsify_cnn.techniques.perforation.job import optimize_perforation
from sparsify_cnn.techniques.perforation.rewrite import PerforationConfig, insert_perforated_convs, perforated_ops
from sparsify_cnn.techniques.perforation.search import RateSearchConfig
from sparsify_cnn.training import TrainConfig, train

MILESTONES = (1.5, 2.0, 2.5, 3.0, 4.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cq")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--masks", nargs="*", default=["impact", "grid", "pooling", "uniform"])
    parser.add_argument("--interpolation", default="nearest")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--finetune-lr", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    prepared, seconds = trained_zoo_model(args.model, args.epochs, threads=args.threads)
    data, dense_gm = prepared.data, prepared.captured.graph_module
    dense_test = evaluate(dense_gm, data.test).value
    print(f"{args.model} trained on digits {data.input_shape} in {seconds:.1f} s; dense test top-1 "
          f"{100 * dense_test:.2f}%; {args.interpolation} interpolation; fine-tuning {args.finetune_epochs} "
          f"epochs at lr {args.finetune_lr}; {args.threads} threads")  # fmt: skip
    print("| mask | target | speedup (MACs) | steps | calib loss (pts) | test loss (pts) | test loss fine-tuned (pts) "
          "| kept per layer |")
    print("|---|---|---|---|---|---|---|---|")
    for mask in args.masks:
        search = RateSearchConfig(mask=mask, epsilon=None, speedup=max(MILESTONES))
        result = optimize_perforation(prepared, PerforationConfig(interpolation=args.interpolation), search)
        found = result.search
        dense_calib = found.dense_accuracy
        for target in MILESTONES:
            point = next((p for p in found.points if found.dense_macs / p.macs >= target), None)
            if point is None:
                print(f"| {mask} | {target:g}x | not reached | | | | | |")
                continue
            gm = insert_perforated_convs(dense_gm, PerforationConfig(interpolation=args.interpolation)).graph_module
            ops = perforated_ops(gm)
            for name, kept in found.masks_at(point).items():
                ops[name].set_kept(kept)
            test = evaluate(gm, data.test).value
            fine = "n/a"
            if args.finetune_epochs:
                train(gm, data, TrainConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, seed=0))
                fine = f"{100 * (dense_test - evaluate(gm, data.test).value):.2f}"
            kept = ", ".join(f"{name} {fraction:.2f}" for name, fraction in point.kept.items())
            print(f"| {mask} | {target:g}x | {found.dense_macs / point.macs:.2f}x | {point.step} | "
                  f"{100 * (dense_calib - point.accuracy):.2f} | {100 * (dense_test - test):.2f} | {fine} | {kept} |")  # fmt: skip


if __name__ == "__main__":
    main()
