"""Output-size arithmetic for the models whose classifier width depends on the input size."""

from __future__ import annotations

import math


def pair(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def conv_out(n: int, kernel: int, stride: int = 1, pad: int = 0) -> int:
    return (n + 2 * pad - kernel) // stride + 1


def caffe_pool_out(n: int, kernel: int, stride: int, pad: int = 0) -> int:
    """Caffe's pooling output size (``PoolingLayer::Reshape``): it rounds up.

    PyTorch's ``ceil_mode=True`` gives the same size whenever ``pad > 0`` or
    ``kernel >= stride`` (true of every pool in the zoo): both drop a last window that would
    start in the right padding, but PyTorch also does so when ``pad == 0``, and with
    ``kernel >= stride`` no window can start there.
    """
    out = math.ceil((n + 2 * pad - kernel) / stride) + 1
    if pad and (out - 1) * stride >= n + pad:
        out -= 1
    return out
