"""JSON from disk (plans, manifests, checkpoints, a .pt2's metadata) is checked against a JSON
Schema before it is used: a hand-edited or corrupt file gives one line that names the file and
the path of the bad field, never a ``KeyError`` or ``TypeError`` deep inside::

    data = read_json(path, PLAN_SCHEMA, "plan")
    # InputError: plan 'p.json': masks.conv1.shape[0] must be an integer, not a string
"""

from __future__ import annotations

import json
from pathlib import Path

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from .errors import InputError

MAX_JSON_BYTES = 1 << 30  # a plan of a large model with full masks is tens of MB


def read_json(path: str | Path, schema: dict, what: str, error: type[Exception] = InputError):
    """The JSON in ``path``, valid against ``schema``; else ``error`` naming ``what`` and the file."""
    path = Path(path)
    label = f"{what} '{path}'"
    try:
        if not path.is_file():
            raise error(f"{label} is not a file" if path.exists() else f"{label} does not exist")
        if path.stat().st_size > MAX_JSON_BYTES:
            raise error(f"{label} is {path.stat().st_size / 2**30:.1f} GiB, more than any {what} can be")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as cause:
        raise error(f"{label} is unreadable: {type(cause).__name__}: {cause}") from cause
    return parse_json(text, schema, label, error)


def parse_json(text: str, schema: dict, label: str, error: type[Exception] = InputError):
    """``text`` parsed and checked against ``schema``; ``label`` names it in the error."""
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as cause:
        raise error(f"{label} is not valid JSON: {_clip(str(cause) or type(cause).__name__)}") from cause
    check(data, schema, label, error)
    return data


def check(data, schema: dict, label: str, error: type[Exception] = InputError) -> None:
    """Raise ``error`` with the first problem (by jsonschema's relevance) of ``data``."""
    problem = best_match(Draft202012Validator(schema).iter_errors(data))
    if problem is not None:
        raise error(f"{label}: {describe(problem)}")


def describe(problem: ValidationError) -> str:
    """``masks.conv1.shape[0] must be an integer, not a string``: the field's path, then what is wrong."""
    where = _clip(field_path(problem.absolute_path)) or "the top level"
    kind, expected, value = problem.validator, problem.validator_value, problem.instance
    if kind == "type":
        wanted = " or ".join(_TYPE_NAMES.get(t, t) for t in ([expected] if isinstance(expected, str) else expected))
        return f"{where} must be {wanted}, not {_type_name(value)}"
    if kind == "required":
        missing = [name for name in expected if isinstance(value, dict) and name not in value]
        return f"{where} lacks the field '{missing[0] if missing else expected[0]}'"
    if kind == "additionalProperties":
        allowed = set(problem.schema.get("properties", {}))
        extra = sorted(k for k in value if k not in allowed) if isinstance(value, dict) else []
        return f"{where} has an unknown field '{extra[0] if extra else '?'}'"
    if kind in ("enum", "const"):
        options = expected if kind == "enum" else [expected]
        return f"{where} is {_clip(json.dumps(value))}; expected {' or '.join(json.dumps(o) for o in options)}"
    if kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        bound = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[kind]
        return f"{where} is {value}; it must be {bound} {expected}"
    if kind in ("minItems", "maxItems", "minLength", "maxLength", "minProperties"):
        return f"{where} has the wrong size ({kind} {expected})"
    if kind == "pattern":
        return f"{where} is {_clip(json.dumps(value))}, which is not of the form {expected}"
    return f"{where}: {_clip(problem.message)}"


def field_path(parts) -> str:
    """``("masks", "conv1", "shape", 0)`` -> ``masks.conv1.shape[0]``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


_TYPE_NAMES = {
    "object": "an object",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}


def _type_name(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    for python, name in ((dict, "object"), (list, "array"), (str, "string"), (int, "integer"), (float, "number")):
        if isinstance(value, python):
            return _TYPE_NAMES[name]
    return type(value).__name__


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _clip(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

