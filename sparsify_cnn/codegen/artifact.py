"""A deployable artifact: compiled library, parameters, and a manifest (inputs, outputs,
target, versions, plan, the compile-time check, and a checksum of every file)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

FORMAT = "sparsify-artifact"
VERSION = 1
LIBRARY, PARAMS, MANIFEST, CUDA_SOURCE = "model.so", "params.npz", "manifest.json", "model.cu"
# SIMD features whose absence makes compiled x86 code crash: the runtime checks them.
X86_FEATURES = ("sse4.2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512vnni")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_artifact(out: Path, executable, params: list[np.ndarray], manifest: dict) -> dict:
    """Write the library, parameters and manifest into ``out``; return the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    executable.export_library(str(out / LIBRARY))
    np.savez(out / PARAMS, **{f"p{i}": p for i, p in enumerate(params)})
    files = [LIBRARY, PARAMS]
    source = cuda_source(executable)
    if source is not None:
        (out / CUDA_SOURCE).write_text(source)
        files.append(CUDA_SOURCE)
    manifest = {"format": FORMAT, "version": VERSION, **manifest, "num_params": len(params)}
    manifest["files"] = {name: sha256(out / name) for name in files}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def cuda_source(executable) -> str | None:
    """The generated CUDA C of an executable built for CUDA, else None."""
    stack = [executable.mod]
    while stack:
        module = stack.pop()
        if module.kind == "cuda":
            return module.inspect_source()
        stack.extend(module.imports)
    return None


def cpu_features(target_spec: dict) -> list[str]:
    """The checked SIMD features that code for this LLVM target may use."""
    import tvm

    target = tvm.target.Target(target_spec)
    return [f for f in X86_FEATURES if tvm.target.codegen.llvm_cpu_has_features(f, target)]
