"""Perforated against dense, layer by layer: the 13 convs of VGG-16 (CIFAR, 3x32x32), each
compiled by TVM on its own, dense and perforated at rates r with a uniform random mask; the
theoretical speedup (MACs) next to the measured one, all measured in one run.

    python benchmarks/perforation_layers.py --tune-trials 0
    python benchmarks/perforation_layers.py --tune-trials 64 --records records/ --layers 1,3,5

Dense and perforated modules of a layer are compiled first (the same tuning budget each), then
timed in interleaved rounds, so that a busy machine slows them alike. PyTorch eager dense is
given for scale.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch
from torch import nn


def uniform_mask(out_hw: tuple[int, int], rate: float, seed: int = 0) -> torch.Tensor:
    """Keep round((1 - rate) * H'W') positions (at least one), chosen uniformly at random."""
    positions = math.prod(out_hw)
    kept = torch.zeros(positions, dtype=torch.bool)
    order = torch.randperm(positions, generator=torch.Generator().manual_seed(seed))
    kept[order[: max(1, round((1 - rate) * positions))]] = True
    return kept.view(out_hw)


def vgg16_convs(batch: int) -> list[tuple[str, nn.Conv2d, tuple[int, ...], tuple[int, int]]]:
    """(name, conv, input shape, output map) of every conv of the zoo's VGG-16."""
    from sparsify_cnn import models
    from sparsify_cnn.transform.capture import capture
    from sparsify_cnn.transform.layers import find_layers

    torch.manual_seed(0)
    gm = capture(models.build("vgg16", num_classes=10).eval(), (batch, 3, 32, 32)).graph_module
    convs = []
    for layer in find_layers(gm):
        module = gm.get_submodule(layer.node.target) if layer.node.op == "call_module" else None
        if isinstance(module, nn.Conv2d):
            convs.append((layer.name, module, tuple(layer.input_shape), tuple(layer.output_shape[-2:])))
    return convs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.environ.get("TVM_NUM_THREADS", "2"))
    parser.add_argument(
        "--tune-trials", type=int, default=0, help="MetaSchedule trials per module (dense and each rate)"
    )
    parser.add_argument("--records", default=None, help="tuning records directory (reused by later runs)")
    parser.add_argument("--layers", default=None, help="comma-separated conv indices (0-12), default all")
    parser.add_argument("--rates", default="0.5,0.75")
    parser.add_argument("--interpolation", default="nearest")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (median taken)")
    parser.add_argument("--number", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM starts its thread pool
    torch.set_num_threads(args.threads)

    from sparsify_cnn.codegen.measure import CompiledModule
    from sparsify_cnn.codegen.target import target_spec
    from sparsify_cnn.report.timing import median_ms
    from sparsify_cnn.techniques.perforation.op import PerforatedConv

    rates = [float(r) for r in args.rates.split(",")]
    convs = vgg16_convs(args.batch)
    chosen = range(len(convs)) if args.layers is None else [int(i) for i in args.layers.split(",")]
    records = args.records or ("tuning-records" if args.tune_trials > 0 else None)
    print(f"VGG-16 convs (CIFAR 3x32x32), batch {args.batch}, {args.threads} threads, target "
          f"{target_spec('llvm')['mcpu']}, {args.tune_trials} MetaSchedule trials per module, "
          f"{args.interpolation} interpolation, uniform random masks; median of {args.rounds} interleaved rounds of "
          f"{args.repeat} x {args.number} runs")  # fmt: skip
    print("| layer | input | rate | kept | theoretical speedup | eager dense ms | TVM dense ms | TVM perforated ms "
          "| measured speedup | measured / theoretical |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    totals = {"dense": 0.0, **{r: 0.0 for r in rates}}
    speedups: dict[float, list[float]] = {r: [] for r in rates}
    start = time.perf_counter()
    for i in chosen:
        name, conv, shape, out_hw = convs[i]
        x = torch.randn(shape)
        with torch.no_grad():
            eager = median_ms(lambda conv=conv, x=x: conv(x), 20)
        modules = {"dense": conv}
        for rate in rates:
            op = PerforatedConv(conv, out_hw, args.interpolation, layer_name=name)
            op.set_kept(uniform_mask(out_hw, rate))
            modules[rate] = op
        compiled = {
            key: CompiledModule(m, shape, tune_trials=args.tune_trials, records=records) for key, m in modules.items()
        }
        rounds = {key: [] for key in compiled}
        for _ in range(args.rounds):
            for key, module in compiled.items():
                rounds[key].append(module.time_ms(args.number, args.repeat))
        ms = {key: statistics.median(times) for key, times in rounds.items()}
        totals["dense"] += ms["dense"]
        for rate in rates:
            op = modules[rate]
            theoretical = op.positions / op.kept_count
            measured = ms["dense"] / ms[rate]
            totals[rate] += ms[rate]
            speedups[rate].append(measured)
            print(f"| {i} {name} | {'x'.join(map(str, shape[1:]))} | {rate:.2f} | {op.kept_count}/{op.positions} | "
                  f"{theoretical:.2f}x | {eager:.3f} | {ms['dense']:.3f} | {ms[rate]:.3f} | {measured:.2f}x | "
                  f"{measured / theoretical:.2f} |", flush=True)  # fmt: skip
    for rate in rates:
        geomean = math.exp(statistics.mean(math.log(s) for s in speedups[rate]))
        print(f"r = {rate:.2f}: measured speedup per layer {min(speedups[rate]):.2f}x-{max(speedups[rate]):.2f}x "
              f"(geometric mean {geomean:.2f}x, theoretical {1 / (1 - rate):.2f}x); summed over layers "
              f"{totals['dense']:.2f} ms -> {totals[rate]:.2f} ms = {totals['dense'] / totals[rate]:.2f}x")  # fmt: skip
    print(f"({time.perf_counter() - start:.0f} s in all, compilation and tuning included)")


if __name__ == "__main__":
    main()
