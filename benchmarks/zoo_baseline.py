"""Dense baseline of every zoo model on this machine: MACs per image, PyTorch eager latency and
the arithmetic rate it reaches, all measured in one run.

This is the yardstick later techniques are measured against: a transform that saves MACs must
beat these latencies, not only these MAC counts.

    python benchmarks/zoo_baseline.py --threads 2 --batch 1 --repeats 20
"""

from __future__ import annotations

import argparse
import time

import torch

from sparsify_cnn import models
from sparsify_cnn.report.timing import median_ms
from sparsify_cnn.transform.accounting import account
from sparsify_cnn.transform.capture import capture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--models", nargs="*", default=models.zoo_names())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, median of {args.repeats}")
    print("| model | input | capture | capture s | params | MACs/image | eager ms | eager GMAC/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        entry = models.get_entry(name)
        model = entry.factory().eval()
        start = time.perf_counter()
        captured = capture(model, (args.batch, *entry.input_shape))
        capture_s = time.perf_counter() - start
        acc = account(captured)
        x = captured.example_input()
        with torch.no_grad():
            ms = median_ms(lambda: model(x), args.repeats)
        rate = acc.total_macs * args.batch / (ms * 1e-3) / 1e9
        shape = "x".join(map(str, entry.input_shape))
        print(
            f"| {name} | {shape} | {captured.method} | {capture_s:.2f} | {acc.total_params:,} | "
            f"{acc.total_macs:,} | {ms:.2f} | {rate:.1f} |"
        )


if __name__ == "__main__":
    main()
