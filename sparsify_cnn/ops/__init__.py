"""Ops that passes insert into graphs. Each keeps its torch reference semantics and reports
its own cost; capture keeps them whole (fx leaves)."""

from .base import CostedOp, OpCost

__all__ = ["CostedOp", "OpCost"]
