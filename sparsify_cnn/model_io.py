"""Models in and out: zoo names, torch.export programs, state dicts and (trusted) pickles.

Loading is safe by default: nothing that runs code from the file is unpickled unless the user
says they trust it (``trust_pickle``). Every failure is a :class:`ModelLoadError` whose one-line
message names the file and what was expected.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import pickle
import re
import sys
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import models
from .errors import ModelLoadError, first_line
from .pt2_scan import scan, strict_json
from .schema import check
from .transform.batch import GeneralizationError, generalize_batch, static_batch

METADATA_FILE = "sparsify.json"
_POSITIVE = {"type": "integer", "minimum": 1}
METADATA_SCHEMA = {  # what sparsify reads from the metadata; other fields travel untouched
    "type": "object",
    "properties": {
        "input_shape": {"type": "array", "items": _POSITIVE, "minItems": 3, "maxItems": 3},
        "num_classes": _POSITIVE,
        "zoo": {"type": "string"},
        "arch": {"type": "string"},
        "plan": {"type": "string"},
    },
}
_EXPECTED = (
    "expected a torch.export program (.pt2), a state dict with --arch, "
    "a pickled nn.Module with --trust-pickle, or zoo:NAME"
)


@dataclass
class LoadedModel:
    """A model ready to capture, with what is known about its input."""

    module: nn.Module
    source: str
    format: str  # "zoo", "export", "state_dict" or "pickle"
    input_shape: tuple[int, ...] | None = None  # (C, H, W) when the source tells
    metadata: dict = field(default_factory=dict)


def load_model(spec: str, arch: str | None = None, trust_pickle: bool = False) -> LoadedModel:
    """Load ``spec``: ``zoo:NAME`` or a file path. Examples::

        load_model("zoo:lenet")
        load_model("lenet.pt2")
        load_model("weights.pt", arch="mypackage.nets:build")
    """
    if spec.startswith("zoo:"):
        if arch is not None:
            raise ModelLoadError(f"'{spec}' is a zoo model: --arch applies to state dict files only")
        entry = models.get_entry(spec)
        return LoadedModel(entry.factory(), spec, "zoo", entry.input_shape, {"zoo": entry.name})
    path = Path(spec)
    if not path.exists():
        raise ModelLoadError(f"model file '{spec}' does not exist ({_EXPECTED})")
    if path.is_dir():
        raise ModelLoadError(f"'{spec}' is a directory, not a model file ({_EXPECTED})")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"model file '{spec}' is empty ({_EXPECTED})")
    kind = _archive_kind(path)
    if kind == "torchscript":
        raise ModelLoadError(
            f"'{spec}' is a TorchScript archive, which sparsify cannot rewrite; "
            "save the model with torch.export.save (.pt2) or save its state dict"
        )
    if kind == "pt2":
        if arch is not None:
            raise ModelLoadError(f"'{spec}' is a torch.export program: --arch applies to state dicts only")
        return _load_program(path, trust_pickle)
    if kind == "zip":
        raise ModelLoadError(f"'{spec}' is a zip archive but not a PyTorch file ({_EXPECTED})")
    return _load_pickle(path, arch, trust_pickle)


def save_program(
    model: nn.Module, input_shape: tuple[int, ...], path: str | Path, metadata: Mapping | None = None
) -> None:
    """Save ``model`` as a torch.export program with a dynamic batch dimension.

    ``input_shape`` is (C, H, W); ``metadata`` (JSON-serialisable) travels inside the file.
    """
    model = model.eval()
    example = torch.zeros((2, *input_shape))  # batch 2: a batch of 1 would be specialised
    program = torch.export.export(
        model, (example,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},), strict=False
    )
    info = {"input_shape": list(input_shape), **(metadata or {})}
    with warnings.catch_warnings():  # torch's own serialiser warns about its internals
        warnings.simplefilter("ignore", FutureWarning)
        # in memory first, then atomically to disk: torch's file writer aborts on a full disk
        from .storage import write_buffered

        write_buffered(path, lambda f: torch.export.save(program, f, extra_files={METADATA_FILE: json.dumps(info)}))


def _archive_kind(path: Path) -> str:
    try:
        if not zipfile.is_zipfile(path):  # which itself raises on some corrupt directories
            return "pickle"
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError):  # a corrupt directory
        return "pickle"
    if any(name.endswith("/archive_format") or name == "archive_format" for name in names):
        return "pt2"
    if any("/code/" in name or name.endswith("constants.pkl") for name in names):
        return "torchscript"
    if any(name.endswith("data.pkl") for name in names):
        return "pickle"
    return "zip"


def _load_program(path: Path, trust_pickle: bool) -> LoadedModel:
    found = scan(path, METADATA_FILE)  # refuses hostile or broken archives, trusted or not
    if found.pickled and not trust_pickle:
        raise ModelLoadError(
            f"'{path}' is a torch.export program that carries pickled objects ({found.pickled[0]}); "
            "unpickling runs code from the file: pass --trust-pickle if you trust its source"
        )
    if found.code and not trust_pickle:
        raise ModelLoadError(
            f"'{path}' is a torch.export program whose graph holds Python that loading would run ({found.code[0]}); "
            "pass --trust-pickle if you trust its source"
        )
    metadata = _metadata(path, found.extra)
    # load_pt2, not torch.export.load: that one falls back on failure to an older format read
    # with Python's zipfile, a second reader of the same bytes.
    from torch.export.pt2_archive._package import load_pt2

    try:
        with _weights_only_loads(not trust_pickle), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message=_PICKLE_PROTOCOL_WARNING, category=UserWarning)
            program = load_pt2(str(path)).exported_programs["model"]
            module = program.module()
            input_shape = tuple(metadata["input_shape"]) if "input_shape" in metadata else _program_input_shape(program)
    except Exception as error:  # noqa: BLE001 - any failure here means a broken file
        raise ModelLoadError(f"'{path}' is not a readable torch.export program: {first_line(error)}") from error
    return LoadedModel(_any_batch(module, path), str(path), "export", input_shape, metadata)


def _metadata(path: Path, data: bytes | None) -> dict:
    if data is None:
        return {}
    label = f"'{path}' metadata {METADATA_FILE}"
    metadata = strict_json(data, label)
    check(metadata, METADATA_SCHEMA, label, ModelLoadError)
    return metadata


def _any_batch(module: torch.fx.GraphModule, path: Path) -> torch.fx.GraphModule:
    """The program's module, generalised to any batch if it was exported with a static one."""
    batch = static_batch(module)
    if batch is None:
        return module
    (source,) = (n for n in module.graph.nodes if n.op == "placeholder")
    example = torch.randn(tuple(source.meta["val"].shape), generator=torch.Generator().manual_seed(0))
    try:
        return generalize_batch(module, example)
    except GeneralizationError as error:
        why = str(error) if len(str(error)) < 110 else str(error)[:107] + "..."
        raise ModelLoadError(
            f"'{path.name}' was exported with a static batch of {batch} and cannot run other batch sizes ({why}); "
            "export it with dynamic_shapes=({0: torch.export.Dim.DYNAMIC},)"
        ) from error


@contextlib.contextmanager
def _weights_only_loads(enabled: bool):
    """Make every torch.load inside torch.export.load weights-only (some fall back to pickle)."""
    if not enabled:
        yield
        return
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


def _program_input_shape(program) -> tuple[int, ...] | None:
    for spec in program.graph_signature.input_specs:
        if spec.kind.name == "USER_INPUT":
            node = next(n for n in program.graph.nodes if n.name == spec.arg.name)
            shape = node.meta["val"].shape[1:]
            if all(isinstance(s, int) for s in shape):
                return tuple(shape)
    return None


def _load_pickle(path: Path, arch: str | None, trust_pickle: bool) -> LoadedModel:
    if trust_pickle:
        obj = _torch_load(path, weights_only=False)
        if isinstance(obj, nn.Module):
            if arch is not None:
                raise ModelLoadError(f"'{path}' holds a whole nn.Module: --arch applies to state dicts only")
            return LoadedModel(obj, str(path), "pickle")
    else:
        obj = _torch_load(path, weights_only=True)
    state = _state_dict_of(obj)
    if state is None:
        what = "a tensor" if isinstance(obj, torch.Tensor) else f"a {type(obj).__name__}"
        raise ModelLoadError(f"'{path}' holds {what}, not a model ({_EXPECTED})")
    if arch is None:
        raise ModelLoadError(
            f"'{path}' holds a state dict; name its architecture with --arch package.module:factory "
            "or --arch zoo:NAME"
        )
    module, input_shape, info = _build_arch(arch, state)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        refit = _with_classes_of(arch, state, module)
        if refit is None:
            raise ModelLoadError(f"'{path}' does not fit --arch {arch}: {_mismatch(error)}") from error
        module, info["num_classes"] = refit
    return LoadedModel(module, str(path), "state_dict", input_shape, info)


def _with_classes_of(arch: str, state: dict, built: nn.Module) -> tuple[nn.Module, int] | None:
    """The factory's model rebuilt with as many classes as the state dict's classifier has
    (torchvision's and timm's factories take ``num_classes``), if that makes the state fit."""
    if arch.startswith("zoo:"):
        return None
    classifiers = [v for v in state.values() if v.dim() == 2]
    # A lazy module's (LazyLinear's) parameters have no shape until they are loaded.
    built_classifiers = [v for v in built.state_dict().values() if not nn.parameter.is_lazy(v) and v.dim() == 2]
    if not classifiers or not built_classifiers or classifiers[-1].shape[0] == built_classifiers[-1].shape[0]:
        return None
    classes = classifiers[-1].shape[0]
    try:
        module = _factory(arch)(num_classes=classes)
        module.load_state_dict(state, strict=True)
    except Exception:  # noqa: BLE001 - no num_classes, or still no fit: report the first mismatch
        return None
    return module, classes


def _check_crc(path: Path) -> None:
    """torch.save writes a zip whose entries torch.load reads without checking their CRC-32:
    damaged weights would load silently."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError) as error:
        raise ModelLoadError(f"'{path}' is not a readable PyTorch file ({first_line(error)}); {_EXPECTED}") from error
    if damaged is not None:
        raise ModelLoadError(f"'{path}' is damaged: entry '{damaged}' does not match its CRC-32")


# torch's weights-only unpickler warns about any pickle protocol but 2, before it refuses or loads.
_PICKLE_PROTOCOL_WARNING = r"Detected pickle protocol \d+ in the checkpoint"


def _torch_load(path: Path, weights_only: bool):
    _check_crc(path)
    try:
        with warnings.catch_warnings():  # a hostile or foreign pickle's protocol is no news to the user
            warnings.filterwarnings("ignore", message=_PICKLE_PROTOCOL_WARNING, category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as error:
        names = re.findall(r"GLOBAL ([\w.]+)", str(error))
        if weights_only and "Weights only load failed" in str(error):
            named = f" (it names {names[0]})" if names else ""
            raise ModelLoadError(
                f"'{path}' is a pickled Python object{named}; loading it runs code from the file: "
                "pass --trust-pickle if you trust its source, or save a state dict or a "
                "torch.export program instead"
            ) from error
        raise ModelLoadError(f"'{path}' is not a readable PyTorch file: {first_line(error)}") from error
    except Exception as error:  # noqa: BLE001 - truncated, corrupt or foreign files
        raise ModelLoadError(
            f"'{path}' is not a readable PyTorch file ({first_line(error)}); {_EXPECTED}"
        ) from error


def _state_dict_of(obj) -> dict | None:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):  # common checkpoint layouts
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            state = OrderedDict(obj)
            # Module versions (batch norm's, MNASNet's) travel in the metadata: load_state_dict reads them.
            state._metadata = getattr(obj, "_metadata", None)
            return state
    return None


def _build_arch(arch: str, state: dict) -> tuple[nn.Module, tuple[int, ...] | None, dict]:
    if arch.startswith("zoo:"):
        entry = models.get_entry(arch)
        weights = [v for k, v in state.items() if k.endswith("weight") and v.dim() >= 2]
        # Zoo models end in their classifier and start with their stem: read both off the weights.
        num_classes = weights[-1].shape[0] if weights else 10
        in_channels = weights[0].shape[1] if weights else entry.input_shape[0]
        module = entry.factory(num_classes=num_classes, in_channels=in_channels)
        shape = (in_channels, *entry.input_shape[1:])
        return module, shape, {"zoo": entry.name, "num_classes": num_classes}
    module = _factory(arch)()
    if not isinstance(module, nn.Module):
        raise ModelLoadError(f"--arch '{arch}' returned a {type(module).__name__}, not an nn.Module")
    return module, None, {"arch": arch}


def _factory(arch: str):
    module_name, _, factory_name = arch.partition(":")
    if not module_name or not factory_name:
        raise ModelLoadError(f"--arch '{arch}' is not of the form package.module:factory or zoo:NAME")
    _current_dir_last(module_name)
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - a missing module, or one that fails as it runs
        raise ModelLoadError(f"cannot import --arch '{arch}': {first_line(error)}") from error
    except SystemExit as error:  # sys.exit() as it is imported: not a success of ours
        raise ModelLoadError(f"cannot import --arch '{arch}': it called sys.exit({error.code!r})") from error
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        where = getattr(module, "__file__", None) or module_name
        raise ModelLoadError(f"--arch '{arch}': {where} has no function '{factory_name}'")
    return _checked_call(arch, factory)


def _current_dir_last(module_name: str) -> None:
    """Let users name a module in the current directory (which may import its siblings), at the
    END of sys.path and only when no installed module has the name: a numpy.py or tvm.py lying
    in the working directory must not replace the real one for every later import."""
    cwd = os.getcwd()
    if cwd in sys.path or "" in sys.path:
        return
    top = module_name.split(".")[0]
    try:
        installed = top in sys.modules or importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        installed = False
    if not installed:
        sys.path.append(cwd)


def _checked_call(arch: str, factory):
    """``factory`` wrapped so that a call without the arguments it needs, or one that raises,
    is a one-line ModelLoadError."""

    def call(*args, **kwargs):
        try:
            return factory(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - the user's code: any failure is theirs to fix
            if args or kwargs:
                raise
            if isinstance(error, TypeError):
                raise ModelLoadError(
                    f"--arch '{arch}' could not be called without arguments: {first_line(error)}; "
                    "give a factory that takes none"
                ) from error
            raise ModelLoadError(f"--arch '{arch}' failed when called: {first_line(error)}") from error
        except SystemExit as error:
            raise ModelLoadError(f"--arch '{arch}' called sys.exit({error.code!r})") from error

    return call


def _mismatch(error: RuntimeError) -> str:
    text = str(error)
    parts = []
    for label in ("Missing key(s)", "Unexpected key(s)"):
        match = re.search(re.escape(label) + r" in state_dict: (.*?)\.\s*(?:\n|$)", text)
        if match:
            names = re.findall(r'"([^"]+)"', match.group(1))
            parts.append(f"{label.lower()}: {_few(names)}")
    sizes = re.findall(r"size mismatch for ([\w.]+)", text)
    if sizes:
        parts.append(f"size mismatch for {_few(sizes)}")
    return "; ".join(parts) or first_line(error)


def _few(names: list[str], shown: int = 4) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
