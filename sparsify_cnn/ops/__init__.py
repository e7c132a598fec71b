"""What every inserted op shares: its cost record and the registry where its torch reference
meets its TVM lowering. The ops themselves live with their technique
(``sparsify_cnn/techniques/<name>/op.py``) and register when imported."""

from .base import CostedOp, OpCost

__all__ = ["CostedOp", "OpCost"]
