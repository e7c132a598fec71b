"""The dense model compiled by sparsify (default CPU schedules, no tuning) against what users run
instead: PyTorch eager, ONNX Runtime (if installed) and optionally torch.compile, on torchvision
models with random weights, timed in interleaved rounds in one process. Prints the median and the
spread (min-max) of each, the ratios the issue's targets are stated in, and compile times.

    python benchmarks/cpu_baselines.py --threads 2 --batches 1 16
    python benchmarks/cpu_baselines.py --models resnet18 --batches 1 --compile
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sparsify_cnn.bench.runners import BackendUnavailable, TVMSettings, make_runner
from sparsify_cnn.report.timing import interleaved_samples
from sparsify_cnn.transform.capture import capture

MODELS = ("resnet18", "mobilenet_v2", "vgg11", "densenet121")


def timed(backend: str, module, x, settings: TVMSettings):
    """(runner or None, seconds to make it, why not)."""
    start = time.perf_counter()
    try:
        return make_runner(backend, module, x, settings), time.perf_counter() - start, ""
    except BackendUnavailable as error:
        return None, time.perf_counter() - start, str(error)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--batches", nargs="*", type=int, default=[1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--compile", action="store_true", help="Also time torch.compile (minutes per model here).")
    args = parser.parse_args()
    import torchvision

    torch.set_num_threads(args.threads)
    backends = ["eager", *(["compile"] if args.compile else []), "ort", "tvm"]
    print(f"torch {torch.__version__}, {args.threads} threads, random weights, median of {args.rounds} interleaved "
          f"rounds [min-max]; tvm = the sparsify dense artifact, default schedules, no tuning")  # fmt: skip
    print(f"| model | batch | {' | '.join(f'{b} ms' for b in backends)} | ORT / tvm (target >= 0.8) "
          f"| eager / tvm (target >= 1.5) | tvm compile s |")  # fmt: skip
    print("|---|---|" + "---|" * (len(backends) + 3))
    for name in args.models:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)().eval()
        for batch in args.batches:
            x = torch.randn(batch, 3, 224, 224)
            graph = capture(model, tuple(x.shape)).graph_module
            made = {b: timed(b, model if b != "tvm" else graph, x, TVMSettings()) for b in backends}
            ready = [b for b in backends if made[b][0] is not None]
            samples = dict(zip(ready, interleaved_samples([made[b][0] for b in ready], rounds=args.rounds, number=1)))
            median = {b: statistics.median(s) for b, s in samples.items()}
            cells = [f"{median[b]:.1f} [{min(samples[b]):.1f}-{max(samples[b]):.1f}]" if b in median
                     else f"n/a ({made[b][2][:60]})" for b in backends]  # fmt: skip

            def ratio(a: str) -> str:
                return f"{median[a] / median['tvm']:.2f}" if a in median and "tvm" in median else "n/a"

            print(f"| {name} | {batch} | {' | '.join(cells)} | {ratio('ort')} | {ratio('eager')} "
                  f"| {made['tvm'][1]:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
