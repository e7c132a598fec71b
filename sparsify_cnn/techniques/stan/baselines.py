"""The seed's training baselines besides STAN: meProp (Sun et al., ICML 2017) and
convolutional dropout (an ``nn.Dropout`` after a conv, inserted by ``techniques/stan/rewrite.py``).

meProp keeps, for every sample, the k largest-magnitude entries of a linear layer's output
gradient and zeroes the rest before computing the input and weight gradients; the bias gradient
uses the full output gradient, as in the authors' code (lancopku/meProp, ``functions.linear``).
k <= 0 or k >= out_features means no selection, also as there.
"""

from __future__ import annotations

import torch
from torch import nn


def top_k_rows(grad: torch.Tensor, k: int) -> torch.Tensor:
    """``grad`` with all but the k largest |entries| of each row (last dimension) set to 0."""
    if k <= 0 or k >= grad.shape[-1]:
        return grad
    index = grad.abs().topk(k, dim=-1).indices
    return torch.zeros_like(grad).scatter_(-1, index, grad.gather(-1, index))


class _MePropFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, k: int):
        ctx.save_for_backward(x, weight)
        ctx.k, ctx.has_bias = k, bias is not None
        return nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad2 = grad.reshape(-1, grad.shape[-1])
        sparse = top_k_rows(grad2, ctx.k)
        grad_x = (sparse @ weight).view(*grad.shape[:-1], weight.shape[1]) if ctx.needs_input_grad[0] else None
        grad_w = sparse.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        grad_b = grad2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None


class MePropLinear(nn.Module):
    """A linear layer whose backward keeps the top-k output gradients of each sample (training
    only; in eval mode it is the plain layer)."""

    def __init__(self, linear: nn.Linear, k: int, layer_name: str):
        super().__init__()
        self.linear = linear
        self.k = k
        self.layer_name = layer_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.linear(x)
        return _MePropFunction.apply(x, self.linear.weight, self.linear.bias, self.k)

    def extra_repr(self) -> str:
        return f"layer_name={self.layer_name!r}, k={self.k}"
