"""Load a compiled artifact where the model is deployed: TVM's runtime and numpy, no torch.

    model = sparsify_cnn.runtime.load("out/artifact")
    logits = model(images)          # numpy in, numpy out

Loading checks the manifest against its schema (and its sha256, when pinned), that the folder
holds exactly the files it lists, as plain files with matching checksums, the TVM version, that
this machine can run the target (CPU features, or a CUDA GPU); each call checks the input's
shape and dtype. Anything else is one ArtifactError line.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
import tempfile
import zipfile
from collections import Counter
from importlib import metadata
from pathlib import Path

import numpy as np

from .codegen.artifact import FORMAT, LIBRARY, MANIFEST, PARAMS, PLAIN_NAME, VERSION, missing_features
from .errors import first_line
from .npyfile import read_npy
from .plainfile import NotPlainFile, open_plain
from .quiet import tvm_scope_lines_hidden
from .schema import check, parse_json

MAX_MANIFEST_BYTES = 64 << 20
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "dtype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 1}},
        "dtype": {"enum": ["float32"]},
    },
}
MANIFEST_SCHEMA = {
    "type": "object",
    "required": ["format", "version", "inputs", "outputs", "target", "versions", "num_params", "files"],
    "properties": {
        "format": {"const": FORMAT},
        "version": {"const": VERSION},
        "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": _TENSOR},
        "outputs": {"type": "array", "minItems": 1, "items": _TENSOR},
        "target": {"type": "object", "required": ["kind"], "properties": {"kind": {"enum": ["llvm", "cuda"]}}},
        "cpu_features": {"type": "array", "items": {"type": "string"}},
        "versions": {"type": "object", "required": ["apache-tvm"], "properties": {"apache-tvm": {"type": "string"}}},
        "num_params": {"type": "integer", "minimum": 0, "maximum": 1 << 20},
        "files": {
            "type": "object",
            "required": [LIBRARY, PARAMS],
            "propertyNames": {"pattern": PLAIN_NAME, "not": {"const": MANIFEST}},
            "additionalProperties": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        },
    },
}


class ArtifactError(Exception):
    """An artifact that cannot be loaded or run here; the message says why."""

    exit_code = 2


def load(path: str | Path, expected_sha256: str | None = None) -> CompiledModel:
    """Check and load the artifact in directory ``path``. ``expected_sha256``: the digest of its
    manifest.json (printed by ``sparsify compile``); any other manifest is refused.

    The folder must hold exactly manifest.json and the files it lists, all plain files whose
    checksums match; the bytes checked are the bytes loaded."""
    root = Path(path)
    manifest, digest = _manifest(root)
    expected = None if expected_sha256 is None else expected_sha256.strip().lower()
    if expected is not None and digest != expected:
        raise ArtifactError(f"artifact '{root}' has manifest sha256 {digest}, not the expected {expected}")
    files = _files(root, manifest)
    installed = _tvm_version()
    wanted = manifest["versions"]["apache-tvm"]
    if installed != wanted:
        raise ArtifactError(f"artifact '{root}' was compiled with apache-tvm {wanted}; this machine has {installed}")
    _check_machine(manifest)
    params = _params(root, files[PARAMS], manifest["num_params"])
    return CompiledModel(root, manifest, files[LIBRARY], params, digest)


def _load_library(tvm, root: Path, library: bytes):
    """The library from a private copy of the checked bytes (the folder may change meanwhile);
    from the folder itself where temporary files cannot be run (a temp folder mounted noexec)."""
    try:
        with tempfile.TemporaryDirectory(prefix="sparsify-") as private:
            copy = Path(private) / LIBRARY
            copy.write_bytes(library)
            with tvm_scope_lines_hidden():
                return tvm.runtime.load_module(str(copy))
    except Exception:  # noqa: BLE001 - retried below, where a real failure is reported
        pass
    if _read_plain(root / LIBRARY) != library:
        raise ArtifactError(f"artifact file '{root / LIBRARY}' changed while it was being loaded")
    try:
        with tvm_scope_lines_hidden():
            return tvm.runtime.load_module(str(root / LIBRARY))
    except Exception as error:  # noqa: BLE001 - TVM's errors have no common base worth naming
        lines = str(error).strip().splitlines() or [type(error).__name__]
        raise ArtifactError(f"artifact file '{root / LIBRARY}' cannot be loaded here: {lines[-1].strip()}") from error


class CompiledModel:
    """A compiled model: call it on a numpy array of the manifest's input shape and dtype."""

    def __init__(self, root: Path, manifest: dict, library: bytes, params: list[np.ndarray], digest: str = ""):
        tvm = _import_tvm_runtime()
        from tvm.runtime import vm

        self.manifest, self.manifest_sha256 = manifest, digest
        self.input = manifest["inputs"][0]
        self.device = tvm.cuda(0) if manifest["target"]["kind"] == "cuda" else tvm.cpu(0)
        module = _load_library(tvm, root, library)
        try:
            self._vm = vm.VirtualMachine(module, self.device)
        except Exception as error:  # noqa: BLE001 - a library that is not a compiled model
            why = first_line(error)
            raise ArtifactError(f"artifact file '{root / LIBRARY}' is not a compiled model: {why}") from error
        self._params = [tvm.runtime.tensor(p, self.device) for p in params]
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


def _manifest(root: Path) -> tuple[dict, str]:
    path = root / MANIFEST
    if not root.is_dir() or not (path.exists() or path.is_symlink()):
        raise ArtifactError(f"'{root}' is not a sparsify artifact (no {MANIFEST})")
    data = _read_plain(path, MAX_MANIFEST_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ArtifactError(f"'{path}' is not valid JSON: {error}") from error
    manifest = parse_json(text, {}, f"'{path}'", ArtifactError)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ArtifactError(f"'{path}' is not a version {VERSION} sparsify artifact")
    check(manifest, MANIFEST_SCHEMA, f"'{path}'", ArtifactError)
    return manifest, hashlib.sha256(data).hexdigest()


def _files(root: Path, manifest: dict) -> dict[str, bytes]:
    """The listed files' bytes, checked: the folder holds exactly these and manifest.json."""
    listed = manifest["files"]
    for name in listed:
        if not re.fullmatch(PLAIN_NAME, name):  # the schema's pattern lets a trailing newline through
            raise ArtifactError(f"artifact '{root}' lists {name!r}, which is not a plain file name")
    try:
        present = {entry.name: entry for entry in os.scandir(root)}
    except OSError as error:
        raise ArtifactError(f"artifact '{root}' cannot be listed: {error.strerror or error}") from error
    for name in listed:
        if name not in present:
            raise ArtifactError(f"artifact '{root}' is missing {name}")
    for name in sorted(present):
        if name != MANIFEST and name not in listed:
            raise ArtifactError(f"artifact '{root}' holds '{name}', which its manifest does not list")
    files = {}
    for name, expected in listed.items():
        data = _read_plain(root / name)
        if hashlib.sha256(data).hexdigest() != expected:
            raise ArtifactError(f"artifact file '{root / name}' was altered (checksum mismatch)")
        files[name] = data
    return files


def _read_plain(path: Path, limit: int | None = None) -> bytes:
    """The bytes of ``path`` if it is a regular file (not a link, device, fifo or folder)."""
    try:
        with open_plain(path, follow_links=False) as (f, size):
            if limit is not None and size > limit:
                raise ArtifactError(f"artifact file '{path}' is {size:,} bytes, more than any can be")
            try:
                return f.read(size)  # never more than it held when checked
            except OSError as error:
                raise ArtifactError(f"artifact file '{path}' is unreadable: {error.strerror or error}") from error
    except NotPlainFile as error:
        raise ArtifactError(f"artifact file '{path}' is not a plain file: {error.kind}") from None
    except OSError as error:
        raise ArtifactError(f"artifact file '{path}' is not a plain file: {error.strerror or error}") from error


def _params(root: Path, data: bytes, count: int) -> list[np.ndarray]:
    """p0 .. p{count-1} from params.npz, stored as np.savez writes them, and nothing else."""
    label = f"artifact file '{root / PARAMS}'"
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError) as error:
        raise ArtifactError(f"{label} is not an .npz archive: {error}") from error
    names = [info.filename for info in members]
    expected = [f"p{i}.npy" for i in range(count)]
    if len(names) != count or sorted(names) != sorted(expected):
        extra = sorted(set(names) - set(expected)) or [n for n, k in Counter(names).items() if k > 1]
        missing = sorted(set(expected) - set(names))
        what = f"lacks {missing[0]}" if missing else f"holds {extra[0]!r} besides p0..p{count - 1}"
        raise ArtifactError(f"{label} {what}; the manifest says {count} parameters")
    params = {}
    for info in members:
        if info.compress_type != zipfile.ZIP_STORED:
            raise ArtifactError(f"{label}: {info.filename} is compressed; np.savez stores parameters uncompressed")
        try:
            with archive.open(info) as f:
                params[info.filename] = read_npy(f, info.file_size, f"{label} member {info.filename}", ArtifactError)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
            raise ArtifactError(f"{label}: {info.filename} is unreadable: {error}") from error
    return [params[name] for name in expected]


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
