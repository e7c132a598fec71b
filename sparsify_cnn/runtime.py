"""Load a compiled artifact where the model is deployed: TVM's runtime and numpy, no torch.

    model = sparsify_cnn.runtime.load("out/artifact")
    logits = model(images)          # numpy in, numpy out

Loading checks every file's checksum, the TVM version, that this machine can run the target
(CPU features, or a CUDA GPU), and each call checks the input's shape and dtype.
"""

from __future__ import annotations

import json
import os
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from .codegen.artifact import FORMAT, LIBRARY, MANIFEST, PARAMS, VERSION, missing_features, sha256
from .quiet import tvm_scope_lines_hidden


class ArtifactError(Exception):
    """An artifact that cannot be loaded or run here; the message says why."""

    exit_code = 2


def load(path: str | Path) -> CompiledModel:
    """Check and load the artifact in directory ``path``."""
    root = Path(path)
    manifest = _manifest(root)
    for name, expected in manifest["files"].items():
        file = root / name
        if not file.exists():
            raise ArtifactError(f"artifact '{root}' is missing {name}")
        if sha256(file) != expected:
            raise ArtifactError(f"artifact file '{file}' was altered (checksum mismatch)")
    installed = _tvm_version()
    wanted = manifest["versions"].get("apache-tvm")
    if installed != wanted:
        raise ArtifactError(f"artifact '{root}' was compiled with apache-tvm {wanted}; this machine has {installed}")
    _check_machine(manifest)
    return CompiledModel(root, manifest)


class CompiledModel:
    """A compiled model: call it on a numpy array of the manifest's input shape and dtype."""

    def __init__(self, root: Path, manifest: dict):
        tvm = _import_tvm_runtime()
        from tvm.runtime import vm

        self.manifest = manifest
        self.input = manifest["inputs"][0]
        self.device = tvm.cuda(0) if manifest["target"]["kind"] == "cuda" else tvm.cpu(0)
        with tvm_scope_lines_hidden():
            library = tvm.runtime.load_module(str(root / LIBRARY))
            self._vm = vm.VirtualMachine(library, self.device)
        with np.load(root / PARAMS) as params:
            self._params = [tvm.runtime.tensor(params[f"p{i}"], self.device) for i in range(manifest["num_params"])]
        self._tvm = tvm

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        shape, dtype = tuple(self.input["shape"]), self.input["dtype"]
        if x.shape != shape:
            raise ArtifactError(f"input has shape {x.shape}; the artifact was compiled for {shape}")
        if x.dtype != np.dtype(dtype):
            raise ArtifactError(f"input has dtype {x.dtype}; the artifact takes {dtype}")
        out = self._vm["main"](self._tvm.runtime.tensor(np.ascontiguousarray(x), self.device), *self._params)
        while not hasattr(out, "numpy"):  # the importer returns a tuple of outputs
            out = out[0]
        return out.numpy()


def _manifest(root: Path) -> dict:
    path = root / MANIFEST
    if not path.exists():
        raise ArtifactError(f"'{root}' is not a sparsify artifact (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as error:
        raise ArtifactError(f"'{path}' is not valid JSON: {error}") from error
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ArtifactError(f"'{path}' is not a version {VERSION} sparsify artifact")
    return manifest


def _check_machine(manifest: dict) -> None:
    target = manifest["target"]
    if target["kind"] == "cuda":
        tvm = _import_tvm_runtime()
        if not tvm.cuda(0).exist:
            raise ArtifactError(f"the artifact targets CUDA {target.get('arch')}, and this machine has no CUDA GPU")
        return
    missing = missing_features(manifest.get("cpu_features", []), _cpuinfo())
    if missing:
        raise ArtifactError(
            f"the artifact was compiled for {target.get('mcpu')} and needs CPU features this machine lacks: "
            f"{', '.join(missing)}; compile it here with --target llvm"
        )


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""  # not Linux: nothing to check against


def _tvm_version() -> str:
    try:
        return metadata.version("apache-tvm")
    except metadata.PackageNotFoundError:
        return "not installed"


def _import_tvm_runtime():
    """Import TVM's runtime library alone (not the compiler) and keep torch out: tvm_ffi would
    import torch, if installed, only for tensor interchange that numpy does not need."""
    if "tvm" in sys.modules:
        return sys.modules["tvm"]
    blocked = "torch" not in sys.modules
    old_env = os.environ.get("TVM_USE_RUNTIME_LIB")
    os.environ["TVM_USE_RUNTIME_LIB"] = "1"
    if blocked:
        sys.modules["torch"] = None  # makes `import torch` fail inside tvm_ffi's optional import
    try:
        import tvm
    finally:
        if blocked:
            del sys.modules["torch"]
        if old_env is None:
            del os.environ["TVM_USE_RUNTIME_LIB"]
        else:
            os.environ["TVM_USE_RUNTIME_LIB"] = old_env
    return tvm
