"""The JSON Schema of plan.json: a plan read from disk is checked field by field before any of it
is used, so a hand-edited or corrupt plan gives one line naming the bad field
(``masks.conv1.shape[0] must be an integer, not a string``), never a ``KeyError`` deep inside."""

from __future__ import annotations

INT = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
DIM = {"type": "integer", "minimum": 1, "maximum": 1 << 24}
GROUP = {"type": ["integer", "null"], "minimum": 1, "maximum": 1 << 16}
NAME = {"type": "string", "minLength": 1, "maxLength": 4096}
NAMES = {"type": "array", "items": NAME, "maxItems": 1 << 16}
HEX = {"type": "string", "pattern": "^[0-9a-f]{16,64}$"}
VERSION = {"type": "integer", "minimum": 1, "maximum": 1000}

MASK = {
    "type": "object",
    "required": ["shape", "bits"],
    "additionalProperties": False,
    "properties": {
        "shape": {"type": "array", "items": DIM, "minItems": 1, "maxItems": 6},
        "bits": {"type": "string", "pattern": "^[A-Za-z0-9+/]*={0,2}$"},
    },
}



def plan_schema() -> dict:
    """The schema of plan.json, with the config schema of every registered technique."""
    from .technique import techniques

    configs = {t.name: t.config_schema for t in techniques("optimize")}
    return {
        "type": "object",
        "required": ["plan_version", "technique", "config", "masks"],  # a config left out would apply the defaults
        "additionalProperties": False,
        "properties": {
            "plan_version": {"const": 1},
            "technique": {"enum": list(configs)},
            "config": {"type": "object"},  # by technique, below
            "search": {"type": "object"},
            "data": {"type": "object", "properties": {"name": {"type": "string"}, "fingerprint": {"type": "string"}}},
            "model": {
                "type": "object",
                "properties": {
                    "source": {"type": "string"},
                    "graph": HEX,
                    "weights": HEX,
                    "input_shape": {"type": "array", "items": DIM, "minItems": 2, "maxItems": 6},
                },
            },
            "results": {"type": "object"},
            "versions": {"type": "object"},
            "masks": {"type": "object", "additionalProperties": MASK, "propertyNames": NAME},
        },
        "allOf": [
            {
                "if": {"properties": {"technique": {"const": technique}}},
                "then": {"properties": {"config": {"type": "object", "properties": fields, "additionalProperties": False}}},
            }
            for technique, fields in configs.items()
        ],
    }
