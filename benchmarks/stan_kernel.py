"""STAN's compiled skipping kernel against the dense conv, per layer shape and coverage.

For CQ's three convs (batch 64, the shapes STAN covers in ``stan_cq.py``), covered entries drawn
at random at each coverage (the worst case for the kernel's blocks: real coverage clusters),
the time of ``skip_conv`` (everything it does per batch: padding, weight rows, the kernel)
beside PyTorch's dense conv (oneDNN), interleaved, median of ``--rounds``:

    python benchmarks/stan_kernel.py --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from sparsify_cnn.techniques.stan.compiled import compiled, geometry, skip_conv
from sparsify_cnn.techniques.stan.entry import pack_channels

CQ_CONVS = {"conv1": (3, 32, 32), "conv2": (32, 16, 32), "conv3": (32, 8, 64)}  # C_in, H = W, T; 5x5, padding 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--coverages", type=float, nargs="*", default=[0.0, 0.5, 0.6, 0.75, 0.9])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's pool starts (first kernel)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    gen = torch.Generator().manual_seed(0)
    print(f"batch {args.batch}, {args.threads} threads, {args.clock} clock, median of {args.rounds} rounds; "
          "ms per batch, and dense / compiled (> 1: skipping saves time)")  # fmt: skip
    print("| layer | coverage | dense ms | compiled ms | dense / compiled |")
    print("|---|---|---|---|---|")
    for name, (c_in, size, t) in CQ_CONVS.items():
        x = torch.randn(args.batch, c_in, size, size, generator=gen)
        weight, bias = torch.randn(t, c_in, 5, 5, generator=gen) * 0.1, torch.randn(t, generator=gen)
        compiled(geometry(x.shape, weight.shape, (2, 2), (1, 1), (1, 1), True))  # built before timing
        for coverage in args.coverages:
            covered = torch.rand(args.batch, t, size, size, generator=gen) < coverage
            bits, out = pack_channels(covered), torch.empty(args.batch, size, size, t)
            runs = {
                "dense": lambda x=x, w=weight, b=bias: F.conv2d(x, w, b, 1, 2),
                "compiled": lambda x=x, w=weight, b=bias, bits=bits, out=out: skip_conv(
                    x, w, b, bits, out, (2, 2), (1, 1), (1, 1), packed=True
                ),
            }
            times = {key: [] for key in runs}
            for _ in range(args.rounds + 1):  # the first round warms up
                for key, run in runs.items():
                    start = clock()
                    run()
                    times[key].append(clock() - start)
            dense, sparse = (1e3 * statistics.median(times[key][1:]) for key in ("dense", "compiled"))
            print(f"| {name} | {coverage:.0%} | {dense:.2f} | {sparse:.2f} | {dense / sparse:.2f}x |")


if __name__ == "__main__":
    main()
