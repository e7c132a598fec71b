"""Structured sparse convolutions on VGG-19 (CIFAR size, 3x32x32): dense against SSC at a preset
of the seed's tables, in one run: parameter and MAC fractions, measured latency of the whole
model compiled by TVM, and test accuracy after a short training run on the built-in digits.

    python benchmarks/ssc_vgg19.py --preset vgg19-cifar10-10 --epochs 3
    python benchmarks/ssc_vgg19.py --init dense --finetune-epochs 2 --tune-trials 64 --records records/

``--init scratch`` (the seed's way) trains the SSC model from the untrained dense model's weights
restricted to the structure, for as many epochs as the dense model; ``--init dense`` starts it
from the trained dense weights and fine-tunes it. Dense and SSC are compiled with the same
tuning budget, then timed in interleaved rounds so that a busy machine slows them alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vgg19-cifar10-10")
    parser.add_argument(
        "--epochs", type=int, default=3, help="training epochs of the dense model (and SSC from scratch)"
    )
    parser.add_argument("--init", choices=("scratch", "dense"), default="scratch")
    parser.add_argument("--finetune-epochs", type=int, default=2, help="with --init dense")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch", type=int, default=1, help="images per compiled call")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("TVM_NUM_THREADS", "2")))
    parser.add_argument("--tune-trials", type=int, default=0, help="MetaSchedule trials per model")
    parser.add_argument("--records", default=None, help="tuning records directory (reused by later runs)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median taken)")
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM starts its thread pool
    torch.set_num_threads(args.threads)

    from sparsify_cnn import models
    from sparsify_cnn.codegen.measure import CompiledModule
    from sparsify_cnn.data import load_data
    from sparsify_cnn.evaluate import evaluate
    from sparsify_cnn.report.timing import median_ms
    from sparsify_cnn.techniques.ssc.rewrite import SSCConfig, insert_ssc
    from sparsify_cnn.training import TrainConfig, train
    from sparsify_cnn.transform.accounting import account
    from sparsify_cnn.transform.capture import capture

    shape = (args.batch, 3, 32, 32)
    data = load_data("digits", shape[1:])
    torch.manual_seed(0)
    dense = capture(models.build("vgg19", num_classes=10), shape).graph_module
    untrained = insert_ssc(dense, SSCConfig(preset=args.preset))  # before training: SSC from scratch
    rows = {}
    start = time.perf_counter()
    dense_train = train(dense, data, TrainConfig(epochs=args.epochs, lr=args.lr, seed=0))
    if args.init == "scratch":
        ssc, epochs = untrained, args.epochs
    else:
        ssc, epochs = insert_ssc(dense, SSCConfig(preset=args.preset)), args.finetune_epochs
    ssc_train = train(ssc.graph_module, data, TrainConfig(epochs=epochs, lr=args.lr, seed=0))
    before = account(dense)
    for label, gm, trained in (("dense", dense, dense_train), (f"SSC {args.preset}", ssc.graph_module, ssc_train)):
        acc = account(gm)
        x = data.test.x[: args.batch]
        with torch.no_grad():
            eager = median_ms(lambda gm=gm, x=x: gm(x), 20)
        rows[label] = {
            "params": acc.total_params,
            "param_fraction": acc.total_params / before.total_params,
            "macs": acc.total_performed_macs,
            "mac_fraction": acc.total_performed_macs / before.total_macs,
            "eager": eager,
            "test": evaluate(gm, data.test).value,
            "train_s": trained.seconds,
            "epochs": len(trained.epochs),
        }
    records = args.records or ("tuning-records" if args.tune_trials > 0 else None)
    compiled = {
        label: CompiledModule(gm, shape, tune_trials=args.tune_trials, records=records)
        for label, gm in zip(rows, (dense, ssc.graph_module))
    }
    timings = {label: [] for label in compiled}
    for _ in range(args.rounds):
        for label, module in compiled.items():
            timings[label].append(module.time_ms())
    for label, row in rows.items():
        row["tvm"] = statistics.median(timings[label])

    assignment = ssc.assignment
    print(f"VGG-19 (3x32x32, 10 classes), preset {args.preset}: seed's alpha {assignment.target:.0%}, counted here "
          f"{assignment.fraction:.2%} of all parameters; {len(assignment.choices)} SSC layers, "
          f"{len(assignment.skipped)} left dense")  # fmt: skip
    print(f"TVM llvm, batch {args.batch}, {args.threads} threads, {args.tune_trials} MetaSchedule trials per model, "
          f"median of {args.rounds} interleaved rounds; digits {len(data.train)} train / {len(data.test)} test images, "
          f"SSC {'from scratch' if args.init == 'scratch' else 'from the trained dense weights'}; "
          f"{time.perf_counter() - start:.0f} s in all")  # fmt: skip
    print("| model | params | param fraction | MACs/image | MAC fraction | eager ms | TVM ms | TVM speedup "
          "| epochs | train s | test top-1 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    dense_tvm = rows["dense"]["tvm"]
    for label, r in rows.items():
        print(f"| {label} | {r['params']:,} | {r['param_fraction']:.2%} | {r['macs']:,} | {r['mac_fraction']:.2%} | "
              f"{r['eager']:.2f} | {r['tvm']:.2f} | {dense_tvm / r['tvm']:.2f}x | {r['epochs']} | {r['train_s']:.0f} "
              f"| {r['test']:.2%} |")  # fmt: skip


if __name__ == "__main__":
    main()
