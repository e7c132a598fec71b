"""The dense model compiled by sparsify (default CPU schedules, no tuning) against what users run
instead: PyTorch eager, ONNX Runtime (if installed) and optionally torch.compile, on torchvision
models with random weights. Prints the median and the spread (min-max) of each, the ratios the
issue's targets are stated in, and compile times. With ``--techniques``, the artifact of each
technique applied to the model (``_setup.untrained_technique``: perforation-R, ssc) too: its
measured speedup over the dense artifact beside the theoretical one (dense MACs / MACs it
performs), and its speed against ONNX Runtime running the dense model.

Each backend is timed in a process of its own, the processes taking turns (``--processes``
rounds of one process per backend): runtimes in one process disturb each other (each one's
worker threads spin after a run, on the cores the next one needs; ``--together`` times them
interleaved in one process, as ``sparsify bench`` does, to show how much), and one process's
timings vary less than the same command's across processes. The spread shown is over every
timing of every process.

    python benchmarks/cpu_baselines.py --threads 2 --batches 1 16
    python benchmarks/cpu_baselines.py --models resnet18 --batches 1 --compile
    python benchmarks/cpu_baselines.py --models resnet18 vgg11 --techniques perforation-0.5 ssc
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

MODELS = ("resnet18", "mobilenet_v2", "vgg11", "densenet121")


def solo(backends: list[str], name: str, batch: int, threads: int, rounds: int) -> dict:
    """Time ``backends`` on ``name`` in this process, in interleaved rounds when there are
    several: per backend its timings (ms), the seconds it took to make the runner (export,
    compile) and the MACs it performs per batch, or why it is unavailable. Backend
    ``tvm:TECHNIQUE`` is the artifact of the model rewritten by that technique."""
    import torch
    import torchvision
    from _setup import untrained_technique

    from sparsify_cnn.bench.runners import BackendUnavailable, TVMSettings, make_runner
    from sparsify_cnn.report.timing import interleaved_samples
    from sparsify_cnn.transform.accounting import account
    from sparsify_cnn.transform.capture import capture

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    x = torch.randn(batch, 3, 224, 224)
    results, runners = {}, {}
    for backend in backends:
        kind, _, technique = backend.partition(":")
        module, macs = model, None
        if kind == "tvm":
            module = capture(model, tuple(x.shape)).graph_module
            if technique:
                module = untrained_technique(technique, module)
            costs = account(module)
            macs = costs.total_performed_macs if technique else costs.total_macs
        start = time.perf_counter()
        try:
            runners[backend] = make_runner(kind, module, x, TVMSettings())
        except BackendUnavailable as error:
            results[backend] = {"unavailable": str(error)[:60]}
            continue
        results[backend] = {"made_s": time.perf_counter() - start, "macs": macs}
    samples = interleaved_samples(list(runners.values()), rounds=rounds, number=1)
    for backend, timings in zip(runners, samples):
        results[backend]["samples"] = timings
    return results


def in_process(backends: list[str], name: str, batch: int, args) -> dict:
    """``solo`` in a fresh process."""
    command = [sys.executable, __file__, "--solo", ",".join(backends), name, str(batch), "--threads", str(args.threads),
               "--rounds", str(args.rounds)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["failed"])[-1][:60]
        return {backend: {"unavailable": why} for backend in backends}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--batches", nargs="*", type=int, default=[1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10, help="Timings per process.")
    parser.add_argument("--processes", type=int, default=3, help="Processes per backend, taking turns.")
    parser.add_argument("--compile", action="store_true", help="Also time torch.compile (minutes per model here).")
    parser.add_argument(
        "--techniques", nargs="*", default=[], help="Also time the artifact of each (perforation-R, ssc)."
    )
    parser.add_argument("--together", action="store_true",
                        help="All backends in one process, interleaved, as `sparsify bench` times them (to see how "
                        "much they disturb each other).")  # fmt: skip
    parser.add_argument("--solo", nargs=3, metavar=("BACKEND", "MODEL", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.solo:
        backend, name, batch = args.solo
        print(json.dumps(solo(backend.split(","), name, int(batch), args.threads, args.rounds)))
        return
    import torch

    backends = ["eager", *(["compile"] if args.compile else []), "ort", "tvm", *(f"tvm:{t}" for t in args.techniques)]
    where = "all backends in one process, interleaved" if args.together else "each backend in its own process"
    print(f"torch {torch.__version__}, {args.threads} threads, random weights, {where}, "
          f"{args.processes} processes x {args.rounds} timings, median [min-max]; "
          f"tvm = the sparsify dense artifact, default schedules, no tuning")  # fmt: skip
    technique_heads = "".join(f" | {t}: measured / theoretical speedup over tvm (target >= 0.75) | ORT / {t} "
                              f"(target >= 1)" for t in args.techniques)  # fmt: skip
    print(f"| model | batch | {' | '.join(f'{b} ms' for b in backends)} | ORT / tvm (target >= 0.8) "
          f"| eager / tvm (target >= 1.5) | tvm compile s{technique_heads} |")  # fmt: skip
    print("|---|---|" + "---|" * (len(backends) + 3 + 2 * len(args.techniques)))
    for name in args.models:
        for batch in args.batches:
            samples: dict[str, list[float]] = {b: [] for b in backends}
            why, made = {}, {}
            groups = [backends] if args.together else [[backend] for backend in backends]
            for _ in range(args.processes):
                for group in groups:
                    for backend, result in in_process([b for b in group if b not in why], name, batch, args).items():
                        if "unavailable" in result:
                            why[backend] = result["unavailable"]
                            continue
                        samples[backend] += result["samples"]
                        made.setdefault(backend, result)
            median = {b: statistics.median(s) for b, s in samples.items() if s}
            cells = [f"{median[b]:.1f} [{min(samples[b]):.1f}-{max(samples[b]):.1f}]" if b in median
                     else f"n/a ({why.get(b, '')})" for b in backends]  # fmt: skip

            def ratio(a: str, b: str = "tvm") -> str:
                return f"{median[a] / median[b]:.2f}" if a in median and b in median else "n/a"

            compile_s = f"{made['tvm']['made_s']:.0f}" if "tvm" in made else "n/a"
            extra = ""
            for technique in args.techniques:
                backend = f"tvm:{technique}"
                measured = ratio("tvm", backend)
                if measured != "n/a":
                    theoretical = made["tvm"]["macs"] / made[backend]["macs"]
                    measured = f"{measured}x / {theoretical:.2f}x = {float(measured) / theoretical:.2f}"
                extra += f" | {measured} | {ratio('ort', backend)}"
            print(f"| {name} | {batch} | {' | '.join(cells)} | {ratio('ort')} | {ratio('eager')} | {compile_s}{extra} |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
