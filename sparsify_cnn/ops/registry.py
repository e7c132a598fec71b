"""One registry where an inserted op's torch reference meets its TVM lowering.

Each op module registers the name of the torch custom op that stands for it in exported
programs, its reference module, and where its TVM converter lives (imported only when
compiling, so that torch-side code never imports TVM). Adding a technique adds an entry here;
the importer is not edited.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
from collections.abc import Callable
from dataclasses import dataclass

_LOWERING = contextvars.ContextVar("sparsify_lowering", default=False)


@dataclass(frozen=True)
class OpEntry:
    op_name: str  # the torch custom op, e.g. "sparsify::spatial_conv"
    reference: type  # the nn.Module with the reference semantics
    lowering: str  # "module.path:function", a converter (node, importer) -> relax.Var

    @property
    def frontend_key(self) -> str:
        """The name TVM's importer looks the op up by."""
        return self.op_name.split("::", 1)[1] + ".default"

    def converter(self) -> Callable:
        module, _, function = self.lowering.partition(":")
        return getattr(importlib.import_module(module), function)


REGISTRY: dict[str, OpEntry] = {}


def register(entry: OpEntry) -> OpEntry:
    REGISTRY[entry.op_name] = entry
    return entry


def custom_convert_map() -> dict[str, Callable]:
    """The converters of every registered op, keyed as TVM's importer expects."""
    return {entry.frontend_key: entry.converter() for entry in REGISTRY.values()}


@contextlib.contextmanager
def lowering():
    """Inside, inserted ops export as their single custom op (for TVM) instead of the aten ops
    of their reference semantics (portable torch programs)."""
    token = _LOWERING.set(True)
    try:
        yield
    finally:
        _LOWERING.reset(token)


def is_lowering() -> bool:
    return _LOWERING.get()
