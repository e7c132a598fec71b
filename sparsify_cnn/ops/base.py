"""What every inserted op provides: a ``kind`` for reports and its cost per image."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@dataclass(frozen=True)
class OpCost:
    """What an inserted op costs per image: the dense MACs of the layer it replaces and the MACs
    it performs (exact for static structure, measured on data when ``exact`` is False)."""

    dense_macs: int
    performed_macs: int
    exact: bool


@runtime_checkable
class CostedOp(Protocol):
    """An inserted op module that reports its cost (``kind`` names it in reports) and gives the
    dense layer it replaced (what its kernel is timed against, and what stays when a layer is
    left dense)."""

    kind: str
    layer_name: str

    def cost(self, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> OpCost: ...

    def dense_layer(self) -> nn.Module: ...


def conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """A conv's padding as numbers ("valid" and "same" resolved; "same" for odd kernels)."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0)
        return tuple(d * (k - 1) // 2 for d, k in zip(conv.dilation, conv.kernel_size))
    return tuple(conv.padding)


def conv_output_hw(in_hw, kernel_hw, stride, padding, dilation) -> tuple[int, int]:
    """Output height and width of a 2-D conv (what torch and TVM compute)."""
    return tuple(
        (size + 2 * pad - dil * (k - 1) - 1) // st + 1
        for size, k, st, pad, dil in zip(in_hw, kernel_hw, stride, padding, dilation)
    )


def conv_geometry(conv: nn.Conv2d) -> dict:
    """A conv's sizes as plain data (what its compiled time depends on, with its input)."""
    return {
        "in": conv.in_channels, "out": conv.out_channels, "kernel": list(conv.kernel_size),
        "stride": list(conv.stride), "padding": conv.padding if isinstance(conv.padding, str) else list(conv.padding),
        "dilation": list(conv.dilation), "groups": conv.groups, "bias": conv.bias is not None,
    }  # fmt: skip


def tensor_digest(tensor: torch.Tensor) -> str:
    """A short hash of a tensor's dtype, shape and values."""
    data = tensor.detach().cpu().contiguous()
    header = f"{data.dtype}{tuple(data.shape)}".encode()
    return hashlib.sha256(header + data.numpy().tobytes()).hexdigest()[:16]
