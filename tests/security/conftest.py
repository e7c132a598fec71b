"""Hypothesis strategies that damage a JSON document the way hand edits, bad disks and hostile
files do: keys deleted, values of other types, huge or negative numbers, NaN and Infinity
literals, deep nesting, bytes that are not UTF-8, truncation. Tests take the strategy as the
``damaged`` fixture and draw from it: ``data.draw(damaged(text))``."""

from __future__ import annotations

import json

import pytest
from hypothesis import strategies as st

LITERALS = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" + "0" * 400, "[" * 5000 + "]" * 5000, "nul"]
NUMBERS = st.sampled_from([0, -1, 1, 2, 3, 2**31, 2**63, 2**64 + 1, 10**40, -(10**40), 1e308, -1e308, 0.5, 1e-320])
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), NUMBERS,
                   st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))  # fmt: skip
VALUES = st.recursive(LEAVES, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                      max_leaves=8)  # fmt: skip
_MARK = "\u0000fuzz-literal\u0000"


def _paths(node, prefix=()):
    yield prefix
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from _paths(child, (*prefix, key))


def _parent(root, path):
    for key in path[:-1]:
        root = root[key]
    return root


@st.composite
def damaged(draw, text: str) -> bytes:
    """``text`` (a JSON document) with one or two kinds of damage, as the bytes of a file."""
    data = json.loads(text)
    literal = None
    for _ in range(draw(st.integers(1, 2))):
        paths = [p for p in _paths(data) if p]
        path = draw(st.sampled_from(paths))
        parent, key = _parent(data, path), path[-1]
        kind = draw(st.sampled_from(["delete", "replace", "number", "literal", "shape", "permute", "rename"]))
        if kind == "delete":
            del parent[key]
        elif kind == "replace":
            parent[key] = draw(VALUES)
        elif kind == "number":
            parent[key] = draw(NUMBERS)
        elif kind == "literal" and literal is None:
            parent[key], literal = _MARK, draw(st.sampled_from(LITERALS))
        elif kind == "shape" and isinstance(parent, dict) and "shape" in parent:
            parent["shape"] = draw(st.lists(st.one_of(NUMBERS, st.integers(-3, 64)), max_size=5))
        elif kind == "permute" and isinstance(parent, dict) and isinstance(parent.get("shape"), list):
            parent["shape"] = draw(st.permutations(parent["shape"]))  # the same bits, another shape
        elif kind == "rename" and isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = parent.pop(key)
    out = json.dumps(data, indent=1)
    if literal is not None:
        out = out.replace(json.dumps(_MARK), literal)
    raw = out.encode()
    ending = draw(st.sampled_from(["keep"] * 4 + ["bytes", "truncate"]))
    if ending == "bytes":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00", b"\xfe\xff"])) + raw[at:]
    elif ending == "truncate":
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


@pytest.fixture(name="damaged", scope="session")
def damaged_fixture():
    return damaged
