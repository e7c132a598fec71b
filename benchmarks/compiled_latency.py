"""Theoretical against measured: a trained model, dense and with searched Spatial masks, in
PyTorch eager and compiled by TVM (default schedules, no tuning), timed in one process.

    python benchmarks/compiled_latency.py --model cq --mode uniform_filter --epsilon 0.01
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from _setup import trained_zoo_model

from sparsify_cnn.codegen.compile import compile_graph
from sparsify_cnn.report.timing import median_ms
from sparsify_cnn.runtime import load
from sparsify_cnn.techniques.spatial.job import optimize_spatial
from sparsify_cnn.techniques.spatial.rewrite import spatial_ops
from sparsify_cnn.techniques.spatial.search import SearchConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cq")
    parser.add_argument("--mode", default="uniform_filter")
    parser.add_argument("--epsilon", type=float, default=0.01)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    prepared, _ = trained_zoo_model(args.model, args.epochs, batch=args.batch, threads=args.threads)
    captured, data = prepared.captured, prepared.data
    shape = captured.input_shape
    result = optimize_spatial(prepared, search=SearchConfig(mode=args.mode, epsilon=args.epsilon))
    x = data.test.x[: args.batch]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, gm, performed in (
            ("dense", captured.graph_module, result.dense.total_macs),
            (f"spatial {args.mode}", result.graph_module, result.sparse.total_performed_macs),
        ):
            for op in spatial_ops(gm).values():
                op.track_stats = False  # time the op, not its counters
            with torch.no_grad():
                eager = median_ms(lambda gm=gm: gm(x), args.repeats)
            out = f"{tmp}/{label.split()[0]}"
            compile_graph(gm, shape, out, check_inputs=data.calib.x[: 4 * args.batch])
            compiled = load(out)
            xn = x.numpy()
            tvm_ms = median_ms(lambda compiled=compiled: compiled(xn), args.repeats)
            rows.append((label, performed, eager, tvm_ms))
    dense_macs, dense_eager, dense_tvm = rows[0][1], rows[0][2], rows[0][3]
    print(f"{args.model}, batch {args.batch}, {args.threads} threads, median of {args.repeats}; TVM default "
          f"schedules (no tuning); MACs performed on the test split")  # fmt: skip
    print("| model | MACs/image | theoretical speedup | eager ms | TVM ms | TVM speedup vs TVM dense | TVM vs eager dense |")
    print("|---|---|---|---|---|---|---|")
    for label, macs, eager, tvm_ms in rows:
        print(f"| {label} | {macs:,} | {dense_macs / macs:.2f}x | {eager:.3f} | {tvm_ms:.3f} | "
              f"{dense_tvm / tvm_ms:.2f}x | {dense_eager / tvm_ms:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
