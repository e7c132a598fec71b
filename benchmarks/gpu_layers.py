"""Perforated convs and SSC layers against dense on a CUDA GPU: single convs of VGG-16 (CIFAR,
3x32x32), each compiled by TVM for CUDA on its own and tuned with MetaSchedule (the same number
of trials for every kernel), next to PyTorch eager (cuDNN, fp32) for scale.

On a machine with a GPU (and apache-tvm importable):

    PYTHONPATH=. python benchmarks/gpu_layers.py --layers 1,3,8 --batches 1,32 --trials 32 --out out/

(about 80-160 s of tuning per (layer, batch) group on an H100 host with 16 cores, plus about
60 s of one-time MetaSchedule start-up; ``--tune-budget-s`` stops starting new groups, and
``--records DIR`` reuses earlier records: kernels already there are not tuned again.)

Without a GPU, ``--dry-run`` builds every module for the target (default schedules; with
``--trials N`` also MetaSchedule's builder runs, its runner fails) and compiles the generated
CUDA C with nvcc, timing nothing:

    TVM_CUDA_COMPILE_MODE=nvcc python benchmarks/gpu_layers.py --dry-run --layers 1

Per (layer, batch) it builds: the dense conv, ``PerforatedConv`` with a uniform random kept mask
at each rate (nearest interpolation), and ``SSCConv.from_conv(conv, g, p)``. All kernels of all
modules are tuned in ONE MetaSchedule session (round-robin over the distinct kernels, ``--trials``
each; one shared cost model), then every module is compiled with the best schedules (kernels
without a record get dlight's default schedules) and timed by TVM's ``time_evaluator``.

Two deviations from ``sparsify_cnn.codegen.measure.CompiledModule``, both for speed:
- weights and tables are bound as constants before legalization (``--params-as-inputs`` keeps
  them as inputs, as ``CompiledModule`` does on CUDA): FoldConstant then removes the kernels that
  depend on parameters only (bias reshape, window starts, int32 index table), which on a GPU
  would otherwise cost a launch each per call (on CPU the build lifts them to compile time);
- all kernels of all modules are tuned in one MetaSchedule session with one worker pool, rather
  than one session per module (MetaSchedule's start-up dominates small budgets).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perforation_layers import uniform_mask, vgg16_convs

from sparsify_cnn.codegen.target import target_spec

# The H100: the project's CUDA target (block limits included) plus its L2 size.
H100 = {**target_spec("cuda:sm_90"), "l2_cache_size_bytes": 52428800}
TINY_TASKS = ("perforated_window_starts", "perforated_index32", "reshape")  # parameter-only kernels
COMPUTE_TASKS = ("conv2d", "matmul")  # the kernels tuned (others keep dlight's schedules)
EXPORT_FUNC = "sparsify.gpu_layers.export_so"


BUILD_FUNC = "sparsify.gpu_layers.build"


def _worker_init() -> None:
    """MetaSchedule builder workers: the build function of ``codegen.tuning`` (copied, so that a
    worker imports TVM only), and an export to a shared library (the default .tar is linked by the
    single, serial runner worker, once per trial)."""
    import os as _os
    import tempfile

    import tvm as _tvm

    @_tvm.register_global_func(BUILD_FUNC, override=True)
    def _build(mod, target, _params):
        from tvm.driver import build as tvm_build
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        return tvm_build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)

    @_tvm.register_global_func(EXPORT_FUNC, override=True)
    def _export(mod):
        path = _os.path.join(tempfile.mkdtemp(), "tvm_tmp_mod.so")
        mod.export_library(path)
        return path


def persistent_builder(max_workers: int, timeout_sec: float = 120.0):
    """A MetaSchedule builder like ``LocalBuilder`` whose worker processes live for the whole
    session: ``LocalBuilder`` starts a fresh pool (every worker importing TVM) for every batch."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import _serialize_params, _worker_func
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    @derived_object
    class PersistentBuilder(PyBuilder):
        def __init__(self):
            super().__init__()
            self.pool = PopenPoolExecutor(max_workers=max_workers, timeout=timeout_sec, initializer=_worker_init)

        def build(self, build_inputs):
            args = [(BUILD_FUNC, EXPORT_FUNC, b.mod, b.target, _serialize_params(b.params)) for b in build_inputs]
            results = []
            for result in self.pool.map_with_error_catching(lambda x: _worker_func(*x), args):
                if result.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(result.value, None))
                elif result.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"timeout after {timeout_sec} s"))
                else:
                    results.append(BuilderResult(None, f"build failed: {result.value}"))
            return results

    return PersistentBuilder()


# ---------------------------------------------------------------- modules


def make_modules(layers, batches, rates, ssc_gp):
    """[(key, info, module, input_shape)] for every (layer, batch, variant)."""
    from sparsify_cnn.techniques.perforation.op import PerforatedConv
    from sparsify_cnn.techniques.ssc.op import SSCConv

    out = []
    for batch in batches:
        convs = vgg16_convs(batch)
        for i in layers:
            name, conv, shape, out_hw = convs[i]
            conv = conv.eval()
            base = {"layer": i, "name": name, "batch": batch, "input": list(shape), "out_hw": list(out_hw),
                    "dense_macs": math.prod(out_hw) * conv.out_channels * conv.in_channels * 9 * batch}  # fmt: skip
            out.append((f"L{i}_b{batch}_dense", {**base, "variant": "dense", "theoretical": 1.0}, conv, shape))
            for rate in rates:
                op = PerforatedConv(conv, out_hw, "nearest", layer_name=name)
                op.set_kept(uniform_mask(out_hw, rate))
                info = {**base, "variant": f"perf{rate}", "rate": rate, "kept": op.kept_count,
                        "positions": op.positions, "theoretical": op.positions / op.kept_count}  # fmt: skip
                out.append((f"L{i}_b{batch}_perf{rate}", info, op.eval(), shape))
            g, p = ssc_gp
            ssc = SSCConv.from_conv(conv, g, p, layer_name=name).eval()
            info = {**base, "variant": f"ssc_g{g}_p{p}", "g": g, "p": p, "R": float(ssc.ratio),
                    "theoretical": 1 / float(ssc.ratio)}  # fmt: skip
            out.append((f"L{i}_b{batch}_ssc", info, ssc, shape))
    return out


def to_relax(module, shape, target, bind_params: bool):
    """Legalized, fused, unscheduled Relax module (the project's import path), and its
    parameters (empty when bound as constants)."""
    import tvm
    from tvm import relax

    from sparsify_cnn.codegen.exporting import export_static
    from sparsify_cnn.codegen.importer import import_program
    from sparsify_cnn.codegen.measure import _as_graph
    from sparsify_cnn.ops.registry import custom_convert_map

    program = export_static(_as_graph(module, tuple(shape)), tuple(shape))
    with target:
        mod, params = import_program(program, custom_convert_map())
    if bind_params:
        main = mod["main"]
        binding = {var: tvm.runtime.tensor(value) for var, value in zip(main.params[1:], params)}
        mod = relax.transform.BindParams("main", binding)(mod)
        params = []
    mod = relax.transform.CanonicalizeBindings()(relax.transform.DecomposeOpsForInference()(mod))
    with target:
        mod = relax.get_pipeline("zero")(mod)  # legalize, fold constants, fuse
    return mod, params


def finish(mod, target, database):
    """Best tuned schedules where the database has them, dlight's defaults for the rest; build."""
    import tvm
    from tvm import relax
    from tvm.s_tir import dlight

    with target:
        if database is not None:
            with database:
                mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
        tuned = sum(
            1 for f in mod.functions.values()
            if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and f.attrs.get("tirx.is_scheduled", False)
        )  # fmt: skip
        gpu = dlight.gpu
        mod = dlight.ApplyDefaultSchedule(
            gpu.Matmul(), gpu.GEMV(), gpu.Reduction(), gpu.GeneralReduction(), gpu.Fallback()
        )(mod)
    kernels = sum(1 for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc))
    return tvm.compile(mod, target=target), tuned, kernels


# ---------------------------------------------------------------- tuning


def tune_all(relaxed, target, records: Path, trials: int, log, tune_injective=False, rounds=2, budget_s=None):
    """One MetaSchedule session over the distinct kernels of all modules, ``trials`` each, one
    group of kernels per (layer, batch) in turn (one shared cost model, builder and runner);
    groups left when ``budget_s`` seconds have passed are not tuned (dlight's schedules)."""
    import logging

    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    records.mkdir(parents=True, exist_ok=True)
    database = ms.database.JSONDatabase(
        path_workload=str(records / "database_workload.json"),
        path_tuning_record=str(records / "database_tuning_record.json"),
    )
    if trials <= 0:
        return database, {}, []
    groups, seen, reused = {}, {}, []
    for key, info, *_rest, mod, _params in relaxed:
        for task in ms.relax_integration.extract_tasks(mod, target):
            if any(task.task_name.startswith(t) for t in TINY_TASKS):
                continue
            if not tune_injective and not any(word in task.task_name for word in COMPUTE_TASKS):
                continue  # gathers, padding, shuffles: dlight's default GPU schedules
            digest = tvm_ffi.structural_hash(task.dispatched[0])
            if digest in seen:
                continue
            seen[digest] = f"{key}:{task.task_name}"
            if _has_record(database, task.dispatched[0]):
                reused.append(task)  # tuned by an earlier run with these records
                continue
            groups.setdefault((info["layer"], info["batch"]), []).append(task)
    log(
        f"tuning {len(seen) - len(reused)} distinct kernels x {trials} trials in {len(groups)} groups "
        f"({len(reused)} more already in the records)"
    )
    try:
        import xgboost  # noqa: F401

        cost_model = ms.cost_model.CostModel.create("xgb", num_tuning_cores=os.cpu_count())
    except ImportError:
        cost_model = ms.cost_model.CostModel.create("random")
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    builder = persistent_builder(os.cpu_count())
    runner = ms.runner.LocalRunner(
        evaluator_config=ms.runner.EvaluatorConfig(number=10, repeat=1, min_repeat_ms=0), timeout_sec=30.0
    )
    start = time.perf_counter()
    skipped = []
    for (layer, batch), tasks in groups.items():
        if budget_s is not None and time.perf_counter() - start > budget_s:
            skipped.append((layer, batch))
            continue
        # Large-channel convs on tiny maps: about 1% of random schedules fit in 48 KB of shared
        # memory (VerifyGPUCode), so the default 5 sampling rounds often find none at all.
        strategy = ms.search_strategy.EvolutionarySearch(
            population_size=128, init_min_unmeasured=24, max_fail_count=60, genetic_num_iters=3
        )
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            tasks, str(records), strategy=strategy, num_threads=os.cpu_count(), seed=0
        )
        group_start = time.perf_counter()
        ms.tune.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=str(records),
            max_trials_global=trials * len(contexts),
            max_trials_per_task=trials,
            num_trials_per_iter=max(1, trials // rounds),  # rounds > 1: the shared cost model learns
            builder=builder,
            runner=runner,
            database=database,
            cost_model=cost_model,
            task_scheduler="round-robin",
        )
        log(f"  tuned layer {layer} batch {batch}: {len(tasks)} kernels in {time.perf_counter() - group_start:.0f} s")
    log(f"tuning took {time.perf_counter() - start:.0f} s; groups left untuned (over budget): {skipped}")
    best = {}
    for task in [t for tasks in groups.values() for t in tasks] + reused:
        module = task.dispatched[0]
        name = seen[tvm_ffi.structural_hash(module)]
        if _has_record(database, module):
            top = database.get_top_k(database.commit_workload(module), 1)
            best[name] = 1e6 * float(np.mean([float(t) for t in top[0].run_secs]))
        else:
            best[name] = None  # no valid schedule measured
    return database, best, skipped


def _has_record(database, module) -> bool:
    return database.has_workload(module) and bool(database.get_top_k(database.commit_workload(module), 1))


# ---------------------------------------------------------------- timing


def eager_ms(fn, number=20, repeat=15) -> float:
    """Median ms per call of ``fn`` (CUDA events around ``number`` calls, ``repeat`` times)."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(number):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / number)
    return statistics.median(samples)


def tvm_ms(vm, dev, inputs, number=20, repeat=15) -> float:
    vm["main"](*inputs)  # warm: module load, NVRTC
    dev.sync()
    timer = vm.time_evaluator("main", dev, number=number, repeat=repeat)
    return 1e3 * float(np.median(timer(*inputs).results))


def relative_error(got, expected) -> float:
    return float(np.linalg.norm(got - expected) / max(np.linalg.norm(expected), 1e-30))


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="1,3,8,10", help="VGG-16 conv indices (0-12)")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--rates", default="0.5,0.75")
    parser.add_argument("--ssc", default="16,2", help="g,p of the SSC layers (R = 1/g + 1/(9p))")
    parser.add_argument("--trials", type=int, default=32, help="MetaSchedule trials per distinct kernel")
    parser.add_argument("--tune-budget-s", type=float, default=None, help="stop starting tuning groups after this")
    parser.add_argument("--rounds", type=int, default=2, help="search rounds per kernel (trials split evenly)")
    parser.add_argument("--tune-injective", action="store_true", help="also tune gathers/padding/shuffles")
    parser.add_argument("--records", default=None, help="tuning records directory (default OUT/records)")
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-layers-out"))
    parser.add_argument("--params-as-inputs", action="store_true", help="as CompiledModule: no constant folding")
    parser.add_argument("--dry-run", action="store_true", help="build and nvcc-compile only (no GPU needed)")
    args = parser.parse_args()

    import tvm

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(message):
        print(message, flush=True)
        with open(out / "log.txt", "a") as logfile:
            logfile.write(message + "\n")

    t0 = time.perf_counter()
    target = tvm.target.Target(H100)
    layers = [int(i) for i in args.layers.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    rates = [float(r) for r in args.rates.split(",")]
    g, p = (int(v) for v in args.ssc.split(","))
    dev = tvm.cuda(0)
    if not args.dry_run and not dev.exist:
        sys.exit("no CUDA device visible to TVM (use --dry-run to only build)")
    log(f"torch {torch.__version__}, tvm {tvm.__version__}, torch GPU: "
        f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}; "
        f"TVM cuda(0) exists: {dev.exist}; target {H100['arch']}; trials {args.trials}; "
        f"compile mode {os.environ.get('TVM_CUDA_COMPILE_MODE', 'nvrtc')}")  # fmt: skip

    entries = make_modules(layers, batches, rates, (g, p))
    relaxed = []
    for key, info, module, shape in entries:
        mod, params = to_relax(module, shape, target, bind_params=not args.params_as_inputs)
        relaxed.append((key, info, module, shape, mod, params))
    log(f"{len(relaxed)} modules imported and legalized ({time.perf_counter() - t0:.0f} s)")

    records = Path(args.records) if args.records else out / "records"
    database, best, skipped = tune_all(
        relaxed, target, records, args.trials, log, args.tune_injective, args.rounds, args.tune_budget_s
    )

    results = []
    torch.backends.cudnn.benchmark = True
    for key, info, module, shape, mod, params in relaxed:
        try:
            row = measure(key, info, module, shape, mod, params, target, database, dev, args.dry_run, log)
        except Exception as error:  # noqa: BLE001 - one failed module must not cost the others
            message = f"{error}\n{error.__cause__ or ''}".strip().splitlines()
            message = [line for line in message if "error" in line.lower()][-3:] or message[-1:]
            row = {"key": key, **info, "error": " / ".join(message)[:500]}
            log(f"{key}: FAILED: {row['error']}")
        results.append(row)

    (out / "results.json").write_text(json.dumps({"args": vars(args), "target": H100, "best_kernel_us": best, "untuned_groups": skipped,
                                                  "results": results}, indent=1))  # fmt: skip
    if not args.dry_run:
        table = render(results, args)
        (out / "table.md").write_text(table)
        print(table)
    log(f"total {time.perf_counter() - t0:.0f} s")


def measure(key, info, module, shape, mod, params, target, database, dev, dry_run, log) -> dict:
    import tvm
    from tvm import relax

    start = time.perf_counter()
    executable, tuned, kernels = finish(mod, target, database)
    row = {"key": key, **info, "kernels": kernels, "tuned_kernels": tuned,
           "build_s": round(time.perf_counter() - start, 2)}  # fmt: skip
    if dry_run:
        from sparsify_cnn.codegen.compile import _nvcc_compile

        row["nvcc"] = _nvcc_compile(executable, H100)
        log(f"{key}: {kernels} kernels ({tuned} tuned), {row['nvcc']}")
        return row
    vm = relax.VirtualMachine(executable, dev)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    inputs = [tvm.runtime.tensor(a, dev) for a in (x.numpy(), *params)]
    got = vm["main"](*inputs)
    while not hasattr(got, "numpy"):
        got = got[0]
    cuda_module = module.to("cuda")
    xc = x.to("cuda")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        expected = cuda_module(xc).double().cpu().numpy()
        row["rel_err"] = relative_error(got.numpy().astype(np.float64), expected)
        row["tvm_ms"] = tvm_ms(vm, dev, inputs)
        if info["variant"] in ("dense",) or info["variant"].startswith("ssc"):
            row["eager_ms"] = eager_ms(lambda: cuda_module(xc))
            torch.backends.cudnn.allow_tf32 = True
            row["eager_tf32_ms"] = eager_ms(lambda: cuda_module(xc))
            torch.backends.cudnn.allow_tf32 = False
    module.to("cpu")
    log(f"{key}: tvm {row['tvm_ms']:.4f} ms, eager {row.get('eager_ms', float('nan')):.4f} ms, "
        f"{kernels} kernels ({tuned} tuned), rel err {row['rel_err']:.1e}")  # fmt: skip
    return row


def render(results, args) -> str:
    by = {(r["layer"], r["batch"], r["variant"]): r for r in results}
    nan = float("nan")

    def get(row, field):
        return row.get(field, nan) if row else nan

    lines = [
        (
            f"TVM 0.27 CUDA sm_90, MetaSchedule {args.trials} trials per distinct kernel; fp32; "
            f"{'params as inputs' if args.params_as_inputs else 'weights/tables bound as constants'}; "
            "PyTorch eager cuDNN fp32 (TF32 off, cudnn.benchmark); medians; times in ms"
        ),
        "",
        (
            "| layer | input | batch | variant | theor. speedup (MACs) | TVM ms | TVM dense ms | eager dense ms "
            "| speedup vs TVM dense | speedup vs eager dense | kernels (tuned) | rel err |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        dense = by.get((r["layer"], r["batch"], "dense"))
        head = f"| {r['layer']} | {'x'.join(map(str, r['input'][1:]))} | {r['batch']} | {r['variant']} | {r['theoretical']:.2f}x"
        if "error" in r:
            lines.append(f"{head} | failed: {r['error'][:120]} | | | | | | |")
            continue
        ms = r["tvm_ms"]
        lines.append(
            f"{head} | {ms:.4f} | {get(dense, 'tvm_ms'):.4f} | {get(dense, 'eager_ms'):.4f} | "
            f"{get(dense, 'tvm_ms') / ms:.2f}x | {get(dense, 'eager_ms') / ms:.2f}x | "
            f"{r['kernels']} ({r['tuned_kernels']}) | {r['rel_err']:.1e} |"
        )
    lines += ["", "PyTorch eager for scale (ms):", "",
              "| layer | batch | dense fp32 | dense TF32 | SSC fp32 | SSC TF32 |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        if r["variant"] == "dense":
            s = next((x for x in results if x["layer"] == r["layer"] and x["batch"] == r["batch"]
                      and x["variant"].startswith("ssc")), None)  # fmt: skip
            lines.append(f"| {r['layer']} | {r['batch']} | {get(r, 'eager_ms'):.4f} | {get(r, 'eager_tf32_ms'):.4f} | "
                         f"{get(s, 'eager_ms'):.4f} | {get(s, 'eager_tf32_ms'):.4f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
