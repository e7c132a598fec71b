"""Graph rewrites, one file per technique. Each takes a captured ``fx.GraphModule`` and a
config, and returns what it changed and what it skipped (with reasons)."""

from .base import PassResult, select_layers

__all__ = ["PassResult", "select_layers"]
