"""A deployable artifact: compiled library, parameters, and a manifest (inputs, outputs,
target, versions, plan, the compile-time check, and a checksum of every file). The folder holds
exactly these files: the runtime refuses any other (see ``runtime.load``)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import OutputError
from ..quiet import tvm_scope_lines_hidden
from ..storage import atomic_dir

FORMAT = "sparsify-artifact"
VERSION = 1
LIBRARY, PARAMS, MANIFEST, CUDA_SOURCE = "model.so", "params.npz", "manifest.json", "model.cu"
PLAIN_NAME = "^[A-Za-z0-9_][A-Za-z0-9_.-]*$"  # an artifact's file names: no separators, no '..', not hidden
# SIMD features whose absence makes compiled x86 code crash (the runtime checks them): LLVM's
# name -> the flag Linux lists in /proc/cpuinfo. No rule turns one into the other (avx512vnni is
# avx512_vnni there, avx512vbmi stays avx512vbmi), so names are compared through this table only.
X86_FEATURES = {
    "sse4.1": "sse4_1",
    "sse4.2": "sse4_2",
    "avx": "avx",
    "f16c": "f16c",
    "fma": "fma",
    "avx2": "avx2",
    "avx512f": "avx512f",
    "avx512cd": "avx512cd",
    "avx512bw": "avx512bw",
    "avx512dq": "avx512dq",
    "avx512vl": "avx512vl",
    "avx512vnni": "avx512_vnni",
    "avx512bf16": "avx512_bf16",
    "avx512vbmi": "avx512vbmi",
    "avx512vbmi2": "avx512_vbmi2",
    "avx512fp16": "avx512_fp16",
    "avxvnni": "avx_vnni",
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_artifact(
    out: Path, executable, params: list[np.ndarray], manifest: dict, extra_files: Mapping[str, Path] | None = None
) -> tuple[dict, str]:
    """Write the library, parameters, ``extra_files`` (name in the artifact -> file to copy) and
    the manifest listing them all into folder ``out``, swapped in whole: a failed or killed write
    leaves the previous artifact, or none. Returns the manifest and the sha256 of its bytes."""
    out = Path(os.path.abspath(out))
    extra_files = dict(extra_files or {})
    for name in extra_files:
        if not re.fullmatch(PLAIN_NAME, name) or name in (LIBRARY, PARAMS, MANIFEST, CUDA_SOURCE):
            raise ValueError(f"'{name}' cannot be an artifact's extra file: give a plain file name of its own")
    check_replaceable(out)
    with atomic_dir(out) as tmp:
        with tvm_scope_lines_hidden():
            executable.export_library(str(tmp / LIBRARY))
        np.savez(tmp / PARAMS, **{f"p{i}": p for i, p in enumerate(params)})
        files = [LIBRARY, PARAMS]
        source = cuda_source(executable)
        if source is not None:
            (tmp / CUDA_SOURCE).write_text(source)
            files.append(CUDA_SOURCE)
        for name, source_path in extra_files.items():
            shutil.copyfile(source_path, tmp / name)
            files.append(name)
        manifest = {"format": FORMAT, "version": VERSION, **manifest, "num_params": len(params)}
        manifest["files"] = {name: sha256(tmp / name) for name in files}
        data = json.dumps(manifest, indent=2).encode("utf-8")
        (tmp / MANIFEST).write_bytes(data)
    return manifest, hashlib.sha256(data).hexdigest()


def check_replaceable(out: Path) -> None:
    """Raise OutputError unless ``out`` is new, empty, or a previous artifact: it is swapped whole,
    and a folder of other files (``--out .``) must never be."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputError(f"cannot write the artifact to '{out}': it exists and is not a folder")
    if out.is_dir() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise OutputError(
            f"cannot write the artifact to '{out}': the folder holds other files, which the artifact would replace; "
            "give a new folder or a previous artifact's"
        )


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


def cpuinfo_features(cpuinfo: str) -> set[str] | None:
    """The checked features (LLVM names) that every CPU listed in a /proc/cpuinfo text has;
    None without a ``flags`` line (not x86 Linux). ``cpuinfo_features("flags : sse4_2 avx") ==
    {"sse4.2", "avx"}``"""
    cpus = [set(line.split(":", 1)[1].split()) for line in cpuinfo.splitlines() if line.startswith("flags")]
    if not cpus:
        return None
    flags = set.intersection(*cpus)  # a hybrid CPU runs code on every core type
    return {feature for feature, flag in X86_FEATURES.items() if flag in flags}


def missing_features(required: list[str], cpuinfo: str) -> list[str]:
    """The features of ``required`` (LLVM names, as a manifest records them) that the CPUs in a
    /proc/cpuinfo text lack; a name outside ``X86_FEATURES`` counts as missing, since it cannot
    be checked. Empty when the text lists no flags: nothing to check against."""
    present = cpuinfo_features(cpuinfo)
    return [] if present is None else [f for f in required if f not in present]
