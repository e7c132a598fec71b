"""The memory layout of the search's images: one eager forward pass of a batch, stored
contiguous (NCHW) against channels last, the layout the Spatial search keeps its images in
(``techniques/spatial/evaluator.py``), with the largest difference of the outputs.

    python benchmarks/search_layout.py --threads 2

The searches run PyTorch (masks are installed in the graph and suffixes are re-run), so eager
PyTorch is what this layout speeds up; the compiled artifact is measured in compiled_latency.py.
"""

from __future__ import annotations

import argparse
import time

import torch

from sparsify_cnn import models

MODELS = {"cq": (170, 32), "mobilenet_v2": (16, 224), "resnet50": (16, 224)}  # name -> (images, side)


def network(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name in models.zoo_names():
        return models.get_entry(name).factory(num_classes=10).eval()
    import torchvision

    return torchvision.models.get_model(name).eval()


def median_ms(model: torch.nn.Module, x: torch.Tensor, runs: int) -> float:
    times = []
    with torch.no_grad():
        model(x)  # warm-up
        for _ in range(runs):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"eager PyTorch {torch.__version__}, {args.threads} threads, median of {args.runs}")
    print("| model | batch | contiguous ms | channels last ms | speedup | max abs diff |")
    print("|---|---|---|---|---|---|")
    for name, (images, side) in MODELS.items():
        model = network(name)
        x = torch.randn(images, 3, side, side, generator=torch.Generator().manual_seed(0))
        last = x.contiguous(memory_format=torch.channels_last)
        plain_ms, last_ms = median_ms(model, x, args.runs), median_ms(model, last, args.runs)
        with torch.no_grad():
            diff = float((model(x) - model(last)).abs().max())
        print(f"| {name} | {images}x3x{side}x{side} | {plain_ms:.1f} | {last_ms:.1f} | {plain_ms / last_ms:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
