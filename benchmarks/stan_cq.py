"""STAN on CIFAR-quick (CQ) with the built-in digits (3x32x32): theta, Z and p_t against
coverage, test error and measured training speedup, beside the seed's timing model; STAN vs
STAN-lite vs dense, the skipping kernels, and the seed's convolutional-dropout baseline. Every
run trains a fresh CQ (seed 0) with the demo's settings (``sparsify train``: batch 64, lr 0.05,
cosine) for the same epochs; speedups are over the dense run's training time.

    python benchmarks/stan_cq.py --epochs 8 --threads 2
    python benchmarks/stan_cq.py --epochs 8 --threads 1 --clock cpu --repeats 3   # a machine shared with other jobs

``--clock cpu`` times with the thread's CPU time (``time.thread_time``): with one thread (torch's
and TVM's), that is the work done, whatever else runs on the machine. Each configuration runs
``--repeats`` times, in interleaved rounds; the table gives the median run (training is seeded:
repeats differ only in time). The compiled kernels are built in a warm-up before the table
(once per layer shape and process; the time is printed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from sparsify_cnn import models
from sparsify_cnn.data import load_data
from sparsify_cnn.errors import TrainingDiverged
from sparsify_cnn.evaluate import evaluate
from sparsify_cnn.techniques.stan.rewrite import StanConfig
from sparsify_cnn.techniques.stan.trainer import TrainSetup, fit
from sparsify_cnn.transform.capture import capture

LATER_CONVS = ("conv2", "conv3")  # every conv but the first (3 input channels: see the README)


def runs(thetas: list[float], theta: float) -> list[tuple[str, dict]]:
    """(label, setup changes): dense, the dropout baseline, a theta sweep for both variants at
    p_t 1, Z 1 (at p_t 0 the first entry matrix covers nearly everything: freshly initialised
    convs output values near 0), the (p_t, Z) grid of the seed's Figure 2 at ``theta``, each
    skipping kernel, and STAN-lite on the later convs only."""
    found = [("dense", {}), ("conv dropout 0.5", {"conv_dropout": 0.5})]
    for variant in ("stan-lite", "stan"):
        found += [(variant, {"stan": StanConfig(variant, theta=t, pre_epochs=1)}) for t in thetas]
    for pre, period in ((0, 1), (0, 2), (1, 2), (1, 3)):
        found.append(("stan-lite", {"stan": StanConfig("stan-lite", theta=theta, pre_epochs=pre, period=period)}))
    for kernel in ("compiled", "positions", "dense"):
        stan = StanConfig("stan-lite", theta=theta, pre_epochs=1, kernel=kernel)
        found.append((f"stan-lite, {kernel} kernel", {"stan": stan}))
    for t, period in ((theta, 1), (max(thetas), 1), (theta, 3)):
        stan = StanConfig("stan-lite", theta=t, pre_epochs=1, period=period, layers=LATER_CONVS)
        found.append((f"stan-lite, {' + '.join(LATER_CONVS)}", {"stan": stan}))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--thetas", type=float, nargs="*", default=[0.0, 0.1, 0.25])
    parser.add_argument("--theta", type=float, default=0.1, help="theta of the (p_t, Z) grid")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's pool starts (first kernel)
    entry = models.get_entry("cq")
    data = load_data("digits", entry.input_shape)
    base = TrainSetup(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=0)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter

    def train(changes: dict):
        torch.manual_seed(0)
        gm = capture(entry.factory(num_classes=data.num_classes), (1, *entry.input_shape)).graph_module
        setup = TrainSetup(**{**base.__dict__, **changes})
        try:
            return setup, fit(gm, data, setup, max_entry_memory=None, clock=clock)
        except TrainingDiverged as error:  # a row that says so, not a NaN model scored as class 0
            return setup, error

    start = time.perf_counter()
    for variant in ("stan-lite", "stan"):  # compiles the kernels of both variants (E as bits / bytes)
        train({"epochs": 2, "stan": StanConfig(variant, theta=0.0, kernel="compiled")})
    print(
        f"CQ on digits {data.input_shape}: {len(data.train)} train / {len(data.test)} test images, {args.epochs} "
        f"epochs, batch {args.batch_size}, lr {args.lr}, {args.threads} threads, {args.clock} clock, median of "
        f"{args.repeats}; warm-up with kernel compilation {time.perf_counter() - start:.1f} s wall"
    )
    configs = runs(args.thetas, args.theta)
    results: list[list] = [[] for _ in configs]
    for _ in range(args.repeats):  # interleaved rounds: slow phases of the machine hit every run
        for i, (_, changes) in enumerate(configs):
            results[i].append(train(changes))
    print(
        "| run | theta | p_t | Z | coverage | computed in skipping epochs | test error | train s "
        "| measured speedup | timing model |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    dense_epoch, details = None, []
    for (label, _), repeats in zip(configs, results, strict=True):
        failed = next((r for _, r in repeats if isinstance(r, TrainingDiverged)), None)
        if failed is not None:  # seeded: every repeat diverges alike
            stan = repeats[0][0].stan
            where = f"{stan.theta:g} | {stan.pre_epochs} | {stan.period}" if stan else " | | "
            print(f"| {label} | {where} | | | diverged at epoch {failed.epoch} | | | |")
            continue
        setup, result = sorted(repeats, key=lambda r: r[1].seconds)[len(repeats) // 2]
        error = 1 - evaluate(result.graph_module, data.test).value
        stan = setup.stan
        if stan is None:
            dense_epoch = dense_epoch or statistics.median(r.seconds for _, r in repeats) / args.epochs
            print(f"| {label} | | | | | | {100 * error:.2f}% | {result.seconds:.1f} | "
                  f"{dense_epoch * args.epochs / result.seconds:.2f}x | |")  # fmt: skip
            continue
        coverage, computed = result.coverage(), result.coverage("computed")
        print(
            f"| {label} | {stan.theta:g} | {stan.pre_epochs} | {stan.period} | {100 * coverage:.1f}% | "
            f"{100 * computed:.1f}% | {100 * error:.2f}% | {result.seconds:.1f} | "
            f"{result.measured_speedup(dense_epoch):.2f}x | {result.predicted_speedup(dense_epoch):.2f}x |"
        )
        demo = stan.variant == "stan-lite" and stan.theta == args.theta and (stan.pre_epochs, stan.period) == (1, 1)
        if demo and stan.kernel == "auto" and len(details) < 2:
            details.append((label, result))
    for label, result in details:
        _print_detail(label, result)


def _print_detail(label: str, result) -> None:
    stan = result.setup.stan
    print(f"\nPer layer, {label} theta {stan.theta:g}, p_t {stan.pre_epochs}, Z {stan.period}: coverage per epoch "
          "(b: entry-matrix epoch, s: skipping), the kernel auto chose, and seconds per epoch (t_f dense forward, "
          "t_b backward, t_e building E, t_skip skipping forward, t_i = t_f - t_skip)")  # fmt: skip
    epochs = " | ".join(f"{e.epoch}{e.kind[0]}" for e in result.epochs)
    print(f"| layer | {epochs} | kernel | t_f | t_b | t_e | t_skip | t_i |")
    print("|---" * (len(result.epochs) + 7) + "|")
    times = result.layer_times()
    for name, t in times.items():
        cover = " | ".join(f"{100 * e.layers[name]['coverage']:.0f}%" for e in result.epochs)
        kernels = sorted({e.layers[name]["kernel"] for e in result.epochs if e.layers[name].get("kernel")})
        print(f"| {name} | {cover} | {', '.join(kernels)} | {t.t_f:.3f} | {t.t_b:.3f} | {t.t_e:.3f} | "
              f"{t.t_skip:.3f} | {t.t_i:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
