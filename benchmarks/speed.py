"""Saved MACs against measured speed: each benchmark model dense and with each technique, on
PyTorch eager, torch.compile and TVM (dense and transformed tuned with the same budget), end
to end and per transformed layer, theoretical beside measured, all in one process.

    python benchmarks/speed.py --models cq,alexbn,vgg16,resnet18-cifar,resnet18 --batches 1,32 --tune-trials 0
    python benchmarks/speed.py --models vgg16 --techniques perforation-0.75 --batches 1 --tune-trials 64 --records rec/

Techniques: perforation-R (grid masks keeping 1-R of the positions of every non-1x1 conv),
ssc (g = 16, p = 2 wherever they divide: R = 1/16 + 1/18 = 0.118 of a 3x3 conv's MACs),
spatial (CQ trained on digits, masks searched with uniform_filter at epsilon 0.01: zero
prediction needs a trained model's activations). Perforation and SSC time the same work
whatever the weights, so those models are untrained. Prints one table per model and
technique and a summary; ``--json`` keeps every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import torch
from _setup import untrained_technique

MODELS = {  # name -> (zoo entry, input shape)
    "cq": ("cq", (3, 32, 32)),
    "alexbn": ("alexbn", (3, 32, 32)),
    "vgg16": ("vgg16", (3, 32, 32)),
    "resnet18-cifar": ("resnet18", (3, 32, 32)),
    "resnet18": ("resnet18", (3, 224, 224)),
}


def spatial_cq(epochs: int):
    from _setup import trained_zoo_model

    from sparsify_cnn.techniques.spatial.job import optimize_spatial
    from sparsify_cnn.techniques.spatial.search import SearchConfig

    prepared, _ = trained_zoo_model("cq", epochs, batch=1, threads=torch.get_num_threads())
    result = optimize_spatial(prepared, search=SearchConfig(mode="uniform_filter", epsilon=0.01))
    return prepared.captured.graph_module, result.graph_module, prepared.data.test.x


def summary_rows(model: str, technique: str, result) -> list[str]:
    rows = []
    for entry in (e for e in result.entries if e.scope == "model"):
        layers = [e for e in result.entries if e.scope == "layer" and e.batch == entry.batch and e.speedup("tvm-dense")]
        ratios = [e.speedup("tvm-dense") / e.theoretical for e in layers]
        dense, mine = entry.dense.ms, entry.transformed.ms
        geomean = math.exp(statistics.mean(math.log(r) for r in ratios)) if ratios else float("nan")
        vs_eager = f"{dense['eager'] / dense['tvm']:.2f}x" if dense.get("eager") and dense.get("tvm") else "n/a"
        layer_range = (f"{min(e.speedup('tvm-dense') for e in layers):.2f}x-{max(e.speedup('tvm-dense') for e in layers):.2f}x"
                       if layers else "n/a")  # fmt: skip
        compile_ms = f"{dense['compile']:.2f}" if dense.get("compile") else "n/a"
        rows.append(
            f"| {model} | {technique} | {entry.batch} | {entry.theoretical:.2f}x | {dense.get('eager', float('nan')):.2f} | "
            f"{compile_ms} | {dense['tvm']:.2f} | {vs_eager} | {mine['tvm']:.2f} | {entry.speedup('tvm-dense'):.2f}x | "
            f"{entry.speedup('eager'):.2f}x | {layer_range} | {geomean:.2f} | "
            f"{sum(e.below_crossover for e in layers)}/{len(layers)} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cq,vgg16")
    parser.add_argument("--techniques", default="perforation-0.75,perforation-0.5,ssc,spatial")
    parser.add_argument("--batches", default="1")
    parser.add_argument("--backends", default="eager,compile,tvm")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("TVM_NUM_THREADS", "2")))
    parser.add_argument("--tune-trials", type=int, default=0, help="MetaSchedule trials per compiled module")
    parser.add_argument("--records", default=None, help="tuning records directory (reused by later runs)")
    parser.add_argument("--target", default="llvm")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=8, help="training epochs of the CQ used for spatial")
    parser.add_argument("--no-layers", action="store_true", help="end to end only")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM starts its thread pool
    torch.set_num_threads(args.threads)

    from sparsify_cnn import models
    from sparsify_cnn.bench import BenchConfig, TVMSettings, bench, render_markdown
    from sparsify_cnn.transform.capture import capture

    config = BenchConfig(
        batches=tuple(int(b) for b in args.batches.split(",")), backends=tuple(args.backends.split(",")),
        tvm=TVMSettings(args.target, args.tune_trials, args.records), rounds=args.rounds, layers=not args.no_layers,
    )  # fmt: skip
    summary, dump = [], []
    start = time.perf_counter()
    for model in args.models.split(","):
        name, shape = MODELS[model]
        for technique in args.techniques.split(","):
            if technique == "spatial":
                if model != "cq":
                    continue  # needs a trained model: CQ on the built-in digits
                dense, rewritten, images = spatial_cq(args.epochs)
            else:
                torch.manual_seed(0)
                sized = {"input_size": shape[1:]} if models.get_entry(name).sized else {}
                dense = capture(models.build(name, num_classes=10, **sized).eval(), (1, *shape)).graph_module
                rewritten = untrained_technique(technique, dense)
                images = torch.randn(32, *shape, generator=torch.Generator().manual_seed(0))
            result = bench(dense, images, config, transformed=rewritten, label=model)
            print(render_markdown(result), flush=True)
            summary += summary_rows(model, technique, result)
            dump.append({"model": model, "technique": technique, **result.to_dict()})
    tuning = f"{args.tune_trials} MetaSchedule trials per module" if args.tune_trials else "default schedules"
    print(f"Summary: {args.threads} threads, target {args.target}, TVM {tuning}, median of {args.rounds} rounds; "
          f"speedups over TVM dense unless said; per-layer 'measured / theoretical' is a geometric mean")  # fmt: skip
    print("| model | technique | batch | theoretical | eager dense ms | torch.compile dense ms | TVM dense ms "
          "| TVM dense vs eager | TVM transformed ms | measured | vs eager | per layer | layer measured / theoretical "
          "| below crossover |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(summary))
    print(f"({time.perf_counter() - start:.0f} s in all)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dump, f, indent=1)


if __name__ == "__main__":
    main()
