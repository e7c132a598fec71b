"""The JSON Schema of plan.json: a plan read from disk is checked field by field before any of it
is used, so a hand-edited or corrupt plan gives one line naming the bad field
(``masks.conv1.shape[0] must be an integer, not a string``), never a ``KeyError`` deep inside."""

from __future__ import annotations

_INT = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
_DIM = {"type": "integer", "minimum": 1, "maximum": 1 << 24}
_GROUP = {"type": ["integer", "null"], "minimum": 1, "maximum": 1 << 16}
_NAME = {"type": "string", "minLength": 1, "maxLength": 4096}
_NAMES = {"type": "array", "items": _NAME, "maxItems": 1 << 16}
_HEX = {"type": "string", "pattern": "^[0-9a-f]{16,64}$"}
_VERSION = {"type": "integer", "minimum": 1, "maximum": 1000}

MASK = {
    "type": "object",
    "required": ["shape", "bits"],
    "additionalProperties": False,
    "properties": {
        "shape": {"type": "array", "items": _DIM, "minItems": 1, "maxItems": 6},
        "bits": {"type": "string", "pattern": "^[A-Za-z0-9+/]*={0,2}$"},
    },
}

CONFIGS = {  # technique -> the schema of its config (the fields of its config dataclass)
    "spatial": {
        "patch_size": _INT,
        "edge": _NAME,
        "channel_group": {"type": "integer", "minimum": 1, "maximum": 1 << 16},
        "layers": _NAMES,
        "version": _VERSION,
    },
    "perforation": {"interpolation": _NAME, "layers": _NAMES, "seed": _INT, "version": _VERSION},
    "ssc": {
        "per_layer": {
            "type": "array",
            "maxItems": 1 << 16,
            "items": {"type": "array", "prefixItems": [_NAME, _GROUP, _GROUP], "minItems": 3, "maxItems": 3},
        },
        "preset": {"type": ["string", "null"], "maxLength": 256},
        "target_fraction": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
        "pointwise_branch": {"type": "boolean"},
        "pointwise_convs": {"type": "boolean"},
        "nondividing": _NAME,
        "init": _NAME,
        "layers": _NAMES,
        "version": _VERSION,
    },
}

PLAN_SCHEMA = {
    "type": "object",
    "required": ["plan_version", "technique", "config", "masks"],  # a config left out would apply the defaults
    "additionalProperties": False,
    "properties": {
        "plan_version": {"const": 1},
        "technique": {"enum": list(CONFIGS)},
        "config": {"type": "object"},  # by technique, below
        "search": {"type": "object"},
        "data": {"type": "object", "properties": {"name": {"type": "string"}, "fingerprint": {"type": "string"}}},
        "model": {
            "type": "object",
            "properties": {
                "source": {"type": "string"},
                "graph": _HEX,
                "weights": _HEX,
                "input_shape": {"type": "array", "items": _DIM, "minItems": 2, "maxItems": 6},
            },
        },
        "results": {"type": "object"},
        "versions": {"type": "object"},
        "masks": {"type": "object", "additionalProperties": MASK, "propertyNames": _NAME},
    },
    "allOf": [
        {
            "if": {"properties": {"technique": {"const": technique}}},
            "then": {"properties": {"config": {"type": "object", "properties": fields, "additionalProperties": False}}},
        }
        for technique, fields in CONFIGS.items()
    ],
}
