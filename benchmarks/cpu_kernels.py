"""Where a dense artifact's time goes: every kernel of a torchvision model (random weights) as the
default CPU schedules build it, compiled and timed one by one on random inputs (the best of
``--repeat`` timings of ``--number`` runs, by ``codegen.tuning.kernel_seconds``), times the
calls the model makes to it; with each conv's and linear layer's GFLOP/s. The sum leaves out
the VM's own work between kernels.

Integer inputs are zeros, so index tables point at one place: kernels that gather through them
(perforation's GEMM and interpolation) then read one cached window over and over, and run faster
alone than in the model. ``--in-situ`` times each kernel as the compiled model calls it instead
(every call of ``--repeat`` runs of the whole model, after warm-up, summed by kernel name).

    python benchmarks/cpu_kernels.py resnet18
    python benchmarks/cpu_kernels.py vgg11 --batch 16 --top 10
    python benchmarks/cpu_kernels.py resnet18 --technique perforation-0.5 --in-situ
"""

from __future__ import annotations

import argparse

import numpy as np


def flops(func) -> float | None:
    """2 x the multiply-adds of a kernel's reduction block (a conv's, a matrix product's): the
    product of its iteration extents; None when it has no reduction or several."""
    from tvm import s_tir
    from tvm.tirx import IterVar

    sch = s_tir.Schedule(func)
    found = []
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        iters = sch.get(block).iter_vars
        if any(int(v.iter_type) == IterVar.CommReduce for v in iters):
            found.append(2.0 * float(np.prod([int(v.dom.extent) for v in iters])))
    return found[0] if len(found) == 1 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--technique", default=None, help="perforation-R or ssc (see _setup.untrained_technique)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--in-situ", action="store_true", help="Time the kernels as the compiled model calls them.")
    parser.add_argument("--number", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    import torch
    import torchvision
    import tvm

    from sparsify_cnn.codegen.build import scheduled_kernels
    from sparsify_cnn.codegen.exporting import export_static
    from sparsify_cnn.codegen.importer import import_program
    from sparsify_cnn.codegen.target import target_spec
    from sparsify_cnn.codegen.tuning import kernel_seconds
    from sparsify_cnn.ops.registry import custom_convert_map
    from sparsify_cnn.transform.capture import capture

    torch.manual_seed(0)
    shape = (args.batch, 3, args.size, args.size)
    graph = capture(getattr(torchvision.models, args.model)().eval(), shape).graph_module
    if args.technique:
        from _setup import untrained_technique

        graph = untrained_technique(args.technique, graph)
    spec = target_spec("llvm")
    target = tvm.target.Target(spec)
    with target:
        mod, params = import_program(export_static(graph, shape), custom_convert_map())
    if args.in_situ:
        in_situ(mod, params, spec, shape, args)
        return
    mod = scheduled_kernels(mod, spec)
    main_text = mod["main"].script()
    rows = []
    for var, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        calls = main_text.count(f"call_tir({var.name_hint},")
        if calls == 0:
            continue  # a kernel of main_transform_params: runs once, at compile time
        ms = 1e3 * kernel_seconds(func, target, number=args.number, repeat=args.repeat)
        work = flops(func)
        rows.append((ms * calls, calls, ms, var.name_hint, [int(d) for d in func.params[-1].shape], work))
    rows.sort(key=lambda row: -row[0])
    print(f"{args.model}, batch {args.batch}: {sum(r[0] for r in rows):.1f} ms in {len(rows)} kernels")
    print("| ms (all calls) | calls | ms each | GFLOP/s | kernel | output |")
    print("|---|---|---|---|---|---|")
    for total, calls, ms, name, out, work in rows[: args.top]:
        rate = f"{work / ms / 1e6:.0f}" if work else ""
        print(f"| {total:.2f} | {calls} | {ms:.3f} | {rate} | {name[:50]} | {out} |")


def in_situ(mod, params, spec, shape, args) -> None:
    """Print each kernel's time as the compiled model calls it (the VM's instrument hook)."""
    import time

    import tvm
    from tvm import relax

    from sparsify_cnn.codegen.build import compile_module, transform_params

    executable = compile_module(mod, spec)
    device = tvm.cpu()
    vm = relax.VirtualMachine(executable, device)
    inputs = [
        np.random.default_rng(0).standard_normal(shape).astype("float32"),
        *transform_params(executable, params, device),
    ]
    inputs = [tvm.runtime.tensor(a, device) for a in inputs]
    for _ in range(3):
        vm["main"](*inputs)
    spent, calls, started = {}, {}, {}

    def instrument(func, symbol, before, result, *arguments):
        name = str(symbol)
        if before:
            started[name] = time.perf_counter()
        else:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - started[name]
            calls[name] = calls.get(name, 0) + 1
        return 0

    vm.set_instrument(instrument)
    for _ in range(args.repeat):
        vm["main"](*inputs)
    rows = sorted(((1e3 * spent[n] / args.repeat, calls[n] // args.repeat, n) for n in spent), reverse=True)
    print(f"{args.model}, batch {args.batch}, in situ: {sum(r[0] for r in rows):.1f} ms a run in {len(rows)} kernels "
          f"and VM builtins (mean of {args.repeat} runs)")  # fmt: skip
    print("| ms (all calls) | calls | kernel |")
    print("|---|---|---|")
    for ms, count, name in rows[: args.top]:
        print(f"| {ms:.2f} | {count} | {name[:60]} |")


if __name__ == "__main__":
    main()
