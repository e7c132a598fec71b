"""Compilation targets: the host CPU (features detected) and CUDA architectures."""

from __future__ import annotations

import os
import re

from ..errors import InputError

CUDA_ARCH = re.compile(r"^sm_\d{2,3}[a-z]?$")
# Per-block limits of every NVIDIA GPU since Volta (TVM's "nvidia/nvidia-h100" tag lists the
# same): MetaSchedule's GPU rules and VerifyGPUCode need them to tune at all.
CUDA_LIMITS = {"max_num_threads": 1024, "max_threads_per_block": 1024, "thread_warp_size": 32,
               "max_shared_memory_per_block": 49152, "registers_per_block": 65536}  # fmt: skip


def host_cpu() -> str:
    """LLVM's name for this machine's CPU (e.g. znver3)."""
    import tvm

    return str(tvm.target.codegen.llvm_get_system_cpu())


def target_spec(name: str) -> dict:
    """A TVM target dict from ``llvm`` (this CPU, all cores), ``llvm:CPU`` or ``cuda:sm_XX``.

    MetaSchedule needs ``num-cores``; a bare ``{"kind": "llvm"}`` would build for generic x86-64.
    """
    kind, _, detail = name.partition(":")
    if kind == "llvm":
        return {"kind": "llvm", "mcpu": detail or host_cpu(), "num-cores": os.cpu_count() or 1}
    if kind == "cuda":
        arch = detail or "sm_80"
        if not CUDA_ARCH.match(arch):
            raise InputError(f"CUDA architecture '{arch}' is not of the form sm_80, sm_90, sm_90a")
        return {"kind": "cuda", "arch": arch, **CUDA_LIMITS}
    raise InputError(f"unknown target '{name}'; choose llvm, llvm:CPU or cuda:sm_XX")
