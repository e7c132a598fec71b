"""Ops that passes insert into graphs. Each keeps its torch reference semantics and reports
its own cost; capture keeps them whole (fx leaves). Importing this package registers every op
with the codegen registry."""

from . import perforation, spatial  # noqa: F401 - registers the ops
from .base import CostedOp, OpCost

__all__ = ["CostedOp", "OpCost"]
