"""What loading a .pt2 archive would do, read the way torch reads it, before torch reads it.

``torch.export.load`` unpickles some payloads (opaque and custom objects, pickled tensors) and
loads AOTInductor libraries, as the archive's config files say. The scan reads those configs
through torch's own zip reader (``PyTorchFileReader``), so it sees the bytes torch will see, and
refuses what could make two readers disagree (duplicate or case-twin names, entries outside the
archive folder) or what it does not understand (configs that are not strict JSON of the known
shape, entries torch would load code from)::

    found = scan(Path("model.pt2"))   # ModelLoadError if the archive is hostile or broken
    found.pickled                     # ["obj"]: names of the payloads torch would unpickle
    found.code                        # ["guards code '...'"]: Python the graph would run

The program's graph is read too: torch exec's its guards code, sympify's its shape expressions
and resolves node targets by getattr from the torch module, so each can run code from the file.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import sympy
import torch

from .errors import ModelLoadError, first_line
from .schema import check

# Entries a torch.export.save archive holds (PyTorchFileWriter adds the bookkeeping ones).
_KNOWN = re.compile(
    r"archive_format|archive_version|byteorder|\.data/[^/]+|\.format_version|\.storage_alignment|"
    r"models/[^/]+\.json|data/sample_inputs/[^/]+\.pt|data/(weights|constants)/[^/]+|extra/[^/]+"
)
_PLAIN = "^[A-Za-z0-9_.-]+$"
MAX_JSON = 256 << 20  # a config or metadata file; the program's graph may be larger
# Graph node targets torch resolves by getattr from torch, operator or math: only these are plain ops.
_TARGET = re.compile(
    r"torch\.ops\.\w+\.\w+(\.\w+)?|torch\._?(sym_\w+|assert\w*|check\w*)|math\.\w+|#.+|"
    r"_operator\.(getitem|add|sub|mul|truediv|floordiv|mod|pow|neg|pos|abs|eq|ne|lt|le|gt|ge|and_|or_|xor|not_|invert)"
)
_ATEN_DUNDER = re.compile(r"torch\.ops\.aten\.__i?(and|or|xor|lshift|rshift)__\.\w+")
# What a shape expression may call: sympy's and torch's sympy functions (it is passed to sympify,
# which evaluates it as Python with the builtins in scope).
_SYMPY_CALLS = {
    "Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Max", "Min", "Abs", "floor", "ceiling", "sqrt",
    "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "Piecewise", "ITE", "Mod",
}
_PAYLOAD_CONFIG = {
    "type": "object",
    "required": ["config"],
    "additionalProperties": False,
    "properties": {
        "config": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["path_name", "use_pickle"],
                "properties": {
                    "path_name": {"type": "string", "pattern": _PLAIN},
                    "is_param": {"type": "boolean"},
                    "use_pickle": {"type": "boolean"},
                    "tensor_meta": {"type": ["object", "null"]},
                },
            },
        }
    },
}


@dataclass
class Scan:
    pickled: list[str]  # payloads torch would unpickle (weights and constants, by name)
    code: list[str]  # Python in the program that loading would evaluate (guards, odd expressions, targets)
    extra: bytes | None  # the extra file asked for (``extra/NAME``), as torch reads it


def scan(path: Path, extra: str = "") -> Scan:
    """Check ``path`` as torch would load it; raise ModelLoadError for anything unsafe or unclear.
    ``extra``: the name of an extra file to return."""
    reader, records = _open(path)
    _check_names(path, records)
    for name in records:
        if not _KNOWN.fullmatch(name):
            raise ModelLoadError(
                f"'{path}' holds '{name}', which no torch.export program has (AOTInductor code is not loaded)"
            )
    if _read(path, reader, "archive_format") != b"pt2" or _read(path, reader, "archive_version") != b"0":
        raise ModelLoadError(f"'{path}' is not a version 0 torch.export archive")
    models = [name[len("models/") : -len(".json")] for name in records if name.startswith("models/")]
    if "model" not in models:
        raise ModelLoadError(f"'{path}' holds no program named 'model' (models/model.json)")
    pickled, code = [], []
    for model in models:
        code += _code(path, reader, records, model)
        for kind in ("weights", "constants"):
            if f"data/{kind}/{model}.pt" in records:  # the legacy layout: a pickle of everything
                pickled.append(f"data/{kind}/{model}.pt")
                continue
            config = _config(path, reader, records, f"data/{kind}/{model}_{kind}_config.json")
            pickled += [fqn for fqn, meta in config.items() if _unpickled(path, kind, fqn, meta)]
    wanted = f"extra/{extra}"
    return Scan(pickled, code, _read(path, reader, wanted, MAX_JSON) if extra and wanted in records else None)


def strict_json(data: bytes, label: str):
    """JSON that means one thing to every reader: UTF-8, no duplicate keys, no NaN."""
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ModelLoadError(f"{label} is not valid JSON: {first_line(error)}") from error


def _open(path: Path):
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            damaged = archive.testzip()  # torch's reader does not check the entries' CRC-32
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError) as error:
        raise ModelLoadError(f"'{path}' is not a readable torch.export program: {first_line(error)}") from error
    if damaged is not None:
        raise ModelLoadError(f"'{path}' is damaged: entry '{damaged}' does not match its CRC-32")
    try:
        reader = torch._C.PyTorchFileReader(str(path))
        records = reader.get_all_records()
    except (RuntimeError, ValueError) as error:  # ValueError: a name that is not UTF-8
        raise ModelLoadError(f"'{path}' is not a readable torch.export program: {_torch_reason(error)}") from error
    # Two zip readers must list the same entries: else each could read a different archive.
    folder = names[0].split("/", 1)[0] + "/" if names else ""
    if [folder + name for name in records] != names:
        raise ModelLoadError(f"'{path}' is a zip whose directory Python and torch read differently")
    return reader, records


def _check_names(path: Path, records: list[str]) -> None:
    seen = {}
    for name in records:
        parts = PurePosixPath(name).parts
        odd = not name or name.startswith("/") or "\\" in name or any(ord(c) < 32 or c == "\x7f" for c in name)
        if odd or ".." in parts or "" in name.split("/"):
            raise ModelLoadError(f"'{path}' holds an entry with an unsafe name: {name!r}")
        # torch's zip reader (miniz) finds names without regard to case.
        key = name.casefold()
        if key in seen:
            twin = "" if seen[key] == name else f" (and '{seen[key]}', the same name to torch's reader)"
            raise ModelLoadError(f"'{path}' holds two entries named '{name}'{twin}; refusing an ambiguous archive")
        seen[key] = name


def _read(path: Path, reader, name: str, limit: int | None = None) -> bytes:
    try:
        if limit is not None and reader.get_record_size(name) > limit:
            raise ModelLoadError(f"'{path}' entry {name} is larger than any such file can be")
        return reader.get_record(name)
    except RuntimeError as error:
        raise ModelLoadError(f"'{path}' has an unreadable entry '{name}': {_torch_reason(error)}") from error


def _config(path: Path, reader, records: list[str], name: str) -> dict:
    if name not in records:
        raise ModelLoadError(f"'{path}' lacks {name}")
    label = f"'{path}' entry {name}"
    data = strict_json(_read(path, reader, name, MAX_JSON), label)
    check(data, _PAYLOAD_CONFIG, label, ModelLoadError)
    return data["config"]


def _code(path: Path, reader, records: list[str], model: str) -> list[str]:
    """What in models/MODEL.json loading would run as Python: guards code (exec'd when the
    program becomes a module), shape expressions beyond plain arithmetic (sympify evaluates
    them), and node targets beyond torch's ops (resolved by getattr from the torch module)."""
    name = f"models/{model}.json"
    program = strict_json(_read(path, reader, name), f"'{path}' entry {name}")
    if not isinstance(program, dict):
        raise ModelLoadError(f"'{path}' entry {name} is not a serialized program")
    guards = program.get("guards_code") or []
    found = [f"guards code {_short(g)}" for g in (guards if isinstance(guards, list) else [guards])]
    stack = [program]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("expr_str"), str) and not _plain_expression(item["expr_str"]):
                found.append(f"shape expression {_short(item['expr_str'])}")
            for node in item.get("nodes", []) if isinstance(item.get("nodes"), list) else []:
                target = node.get("target") if isinstance(node, dict) else None
                if not isinstance(target, str) or not _plain_target(target):
                    found.append(f"call target {_short(target)}")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _plain_target(target: str) -> bool:
    """A torch op, sym op or operator function; dunder names only for aten's bitwise ops
    (``torch.ops.aten.__and__.Tensor``): elsewhere they reach Python's object internals."""
    if not _TARGET.fullmatch(target):
        return False
    return "__" not in target or bool(_ATEN_DUNDER.fullmatch(target))


def _small_power(exponent: ast.expr) -> bool:
    value = exponent.value if isinstance(exponent, ast.Constant) else None
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 64


def _plain_expression(text: str) -> bool:
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    calls = _SYMPY_CALLS | _TORCH_SYMPY
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in calls:
                return False
            strings = [a for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if strings and (node.func.id != "Symbol" or strings != node.args[:1]):
                return False
            if any(not isinstance(k.value, ast.Constant) or isinstance(k.value.value, str) for k in node.keywords):
                return False
            if "Pow" in node.func.id and not (len(node.args) == 2 and _small_power(node.args[1])):
                return False  # Pow, PowByNatural, FloatPow: as for **
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, str) and not re.fullmatch(r"[A-Za-z]\w*", node.value):
                return False
        elif isinstance(node, ast.Name):
            if "__" in node.id:
                return False
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            if not _small_power(node.right):
                return False  # sympy computes 9**9**9 exactly: a hang, not a shape
        elif not isinstance(node, _EXPRESSION_NODES):
            return False
    return True


_EXPRESSION_NODES = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.keyword, ast.Load, ast.operator,
    ast.unaryop, ast.cmpop, ast.boolop,
)
_TORCH_SYMPY = {  # the sympy functions torch defines (FloorDiv, CeilToInt, ...)
    name for name, value in vars(importlib.import_module("torch.utils._sympy.functions")).items()
    if isinstance(value, type) and issubclass(value, sympy.Basic)
}


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unpickled(path: Path, kind: str, fqn: str, meta: dict) -> bool:
    """Mirrors torch's _load_state_dict and _load_constants: what they would unpickle."""
    name = meta["path_name"]
    if kind == "weights":
        return meta["use_pickle"]
    if name.startswith("tensor_"):
        return meta["use_pickle"]
    if name.startswith(("custom_obj_", "opaque_obj_")):
        return True
    raise ModelLoadError(f"'{path}' declares constant '{fqn}' of unknown kind '{name}'")


def _torch_reason(error: RuntimeError) -> str:
    return first_line(error).split(". This is an internal miniz error")[0]


def _unique_keys(pairs):
    data = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"the key {key!r} appears twice")
        data[key] = value
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")
