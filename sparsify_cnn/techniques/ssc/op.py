"""Structured sparse convolution, SSC (Verma et al., WACV 2023; seed 004, ALGORITHMS.md section 4).

``SSCConv(g, p)`` replaces a dense k x k conv (C -> T channels) by the sum of two branches:

- a k x k conv with ``g`` groups (filter t sees the contiguous input block of its group);
- a 1 x 1 conv with ``p`` groups on interleaved inputs: channel c goes to group ``c mod p``, so
  each filter's 1 x 1 inputs span every k x k group. It reads the input at the k x k kernel's
  centre tap, so it is that centre folded into the kernel.

Weights per layer against the dense conv: ``R = 1/g + 1/(p k^2)`` (``1/g`` without the 1 x 1
branch); MACs scale the same way. How the special cases are requested:

- ``g=1, p=None``: the dense conv;
- ``g=C=T, p=None``: the depthwise conv;
- ``g=None, p=P``: no k x k branch, a pointwise group conv (P groups, interleaved; for k > 1 it
  reads the centre tap, so its output has the k x k conv's shape).

``forward`` runs the efficient form: grouped convs, a channel shuffle (view, transpose, reshape)
and an add, all standard aten ops that TVM's frontend lowers, so no custom op is needed.
``reference_weight`` is the same layer as one dense k x k weight (a dense weight times the fixed
binary ``structure_mask``), which tests compare it against.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InputError
from ...ops.base import OpCost, conv_padding

INITS = ("project", "zero")


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


def divisors(n: int) -> list[int]:
    """The divisors of ``n`` in increasing order: ``divisors(12) == [1, 2, 3, 4, 6, 12]``."""
    return [d for d in range(1, n + 1) if n % d == 0]


def ssc_ratio(g: int | None, p: int | None, kernel_size) -> Fraction:
    """Weights (and MACs) of SSC(g, p) over those of the dense conv: ``1/g + 1/(p k^2)``, each
    term absent when its branch is (``None``). ``ssc_ratio(4, 2, 3) == Fraction(1, 4) + Fraction(1, 18)``"""
    taps = math.prod(_pair(kernel_size))
    return (Fraction(1, g) if g else Fraction(0)) + (Fraction(1, p * taps) if p else Fraction(0))


def ssc_problem(in_channels: int, out_channels: int, kernel_size, g: int | None, p: int | None) -> str | None:
    """Why SSC(g, p) cannot replace a conv of this geometry, or None when it can."""
    if g is None and p is None:
        return "neither a k x k branch (g) nor a 1x1 branch (p) is given"
    choices = f"divisors of gcd(C, T) = {math.gcd(in_channels, out_channels)}"
    for name, value in (("g", g), ("p", p)):
        if value is None:
            continue
        if value < 1:
            return f"{name}={value} must be a positive integer"
        for label, channels in (("input", in_channels), ("output", out_channels)):
            if channels % value:
                return f"{name}={value} does not divide the {label} channels ({label[0].upper()}={channels}); use one of the {choices}"
    if p is not None and any(k % 2 == 0 for k in _pair(kernel_size)):
        return f"the 1x1 branch needs a kernel centre; a {'x'.join(map(str, _pair(kernel_size)))} kernel has none"
    return None


class SSCConv(nn.Module):
    """A structured sparse conv: k x k conv with ``g`` groups plus an interleaved 1 x 1 conv with
    ``p`` groups (``None`` leaves a branch out; see the module docstring for the special cases).

    Example::

        ssc = SSCConv(64, 128, 3, padding=1, g=4, p=2)     # R = 1/4 + 1/18
        dense = ssc.dense_equivalent()                    # same outputs, one dense conv
    """

    kind = "ssc"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        g: int | None = 1,
        p: int | None = None,
        bias: bool = True,
        layer_name: str = "",
    ):
        super().__init__()
        problem = ssc_problem(in_channels, out_channels, kernel_size, g, p)
        if problem is not None:
            raise InputError(f"SSC layer '{layer_name or '?'}' ({in_channels} -> {out_channels}): {problem}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.g, self.p = g, p
        self.layer_name = layer_name
        kh, kw = self.kernel_size
        if g is not None:
            self.weight = nn.Parameter(torch.empty(out_channels, in_channels // g, kh, kw))
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default
        else:
            self.register_parameter("weight", None)
        if p is not None:
            self.pointwise_weight = nn.Parameter(torch.empty(out_channels, in_channels // p, 1, 1))
            nn.init.kaiming_uniform_(self.pointwise_weight, a=math.sqrt(5))
        else:
            self.register_parameter("pointwise_weight", None)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, g: int | None, p: int | None, layer_name: str = "", init: str = "project"):
        """SSC(g, p) initialised from a dense conv's weights: the k x k branch takes the dense
        weights inside its groups; the 1 x 1 branch takes, with ``init="project"``, the dense centre
        taps its pattern allows and the k x k groups do not cover (the layer is then the dense conv
        times ``structure_mask``: the closest SSC layer to it), with ``init="zero"`` zeros (the
        layer is then the dense conv masked to its k x k groups). A layer without a k x k branch
        always takes its allowed centre taps."""
        if init not in INITS:
            raise InputError(f"SSC init must be one of {', '.join(INITS)}, got '{init}'")
        if conv.groups != 1:
            raise InputError(f"SSC replaces dense convs; '{layer_name}' has {conv.groups} groups")
        if conv.padding_mode != "zeros":
            raise InputError(f"SSC pads with zeros; '{layer_name}' pads in '{conv.padding_mode}' mode")
        op = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv_padding(conv), conv.dilation,
            g, p, conv.bias is not None, layer_name,
        )  # fmt: skip
        dense = conv.weight.detach()
        with torch.no_grad():
            block = op.block_mask()
            if g is not None:
                op.weight.copy_(dense[block].view_as(op.weight))
            if p is not None:
                allowed = op.pointwise_mask() & ~block if g is not None else op.pointwise_mask()
                centre = dense[:, :, op.kernel_size[0] // 2, op.kernel_size[1] // 2] * allowed
                if init == "zero" and g is not None:
                    centre = torch.zeros_like(centre)
                op.pointwise_weight.copy_(centre[op.pointwise_mask()].view_as(op.pointwise_weight))
            if conv.bias is not None:
                op.bias.copy_(conv.bias.detach())
        return op.to(dense.device, dense.dtype)

    def block_mask(self) -> torch.Tensor:
        """(T, C) bool: filter t reads channel c through the k x k branch (block diagonal; all
        False without the branch)."""
        t, c = torch.arange(self.out_channels)[:, None], torch.arange(self.in_channels)[None]
        if self.g is None:
            return torch.zeros(self.out_channels, self.in_channels, dtype=torch.bool)
        return t // (self.out_channels // self.g) == c // (self.in_channels // self.g)

    def pointwise_mask(self) -> torch.Tensor:
        """(T, C) bool: filter t reads channel c through the 1 x 1 branch (c mod p is t's group)."""
        t, c = torch.arange(self.out_channels)[:, None], torch.arange(self.in_channels)[None]
        if self.p is None:
            return torch.zeros(self.out_channels, self.in_channels, dtype=torch.bool)
        return c % self.p == t // (self.out_channels // self.p)

    def structure_mask(self) -> torch.Tensor:
        """(T, C, kh, kw) bool: the dense weights the structure allows (k x k blocks, plus the
        centre taps of the 1 x 1 pattern)."""
        kh, kw = self.kernel_size
        mask = self.block_mask()[:, :, None, None].expand(-1, -1, kh, kw).clone()
        mask[:, :, kh // 2, kw // 2] |= self.pointwise_mask()
        return mask

    def reference_weight(self) -> torch.Tensor:
        """The dense (T, C, kh, kw) weight of the same layer: the k x k groups placed on the block
        diagonal, the 1 x 1 branch added at the kernel centre (zero outside ``structure_mask``)."""
        kh, kw = self.kernel_size
        ref_dtype = (self.weight if self.weight is not None else self.pointwise_weight).dtype
        weight = torch.zeros(self.out_channels, self.in_channels, kh, kw, dtype=ref_dtype)
        if self.weight is not None:
            weight[self.block_mask()] = self.weight.detach().reshape(-1, kh, kw)
        if self.pointwise_weight is not None:
            weight[:, :, kh // 2, kw // 2][self.pointwise_mask()] += self.pointwise_weight.detach().flatten()
        return weight

    def dense_equivalent(self) -> nn.Conv2d:
        """One dense ``nn.Conv2d`` computing what this layer computes (the reference form)."""
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation,
            bias=self.bias is not None,
        )  # fmt: skip
        with torch.no_grad():
            conv.weight.copy_(self.reference_weight())
            if self.bias is not None:
                conv.bias.copy_(self.bias.detach())
        return conv

    def dense_layer(self) -> nn.Conv2d:
        """A dense conv of the replaced layer's geometry (``dense_equivalent``): the dense work
        this layer is timed against."""
        return self.dense_equivalent()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        if self.weight is not None:
            out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.g)
        if self.pointwise_weight is not None:
            bias = self.bias if out is None else None
            branch = F.conv2d(
                self._centre_taps(x), self.pointwise_weight, bias, self.stride, self._pointwise_padding, 1, self.p
            )
            out = branch if out is None else out + branch
        return out

    @property
    def _pointwise_padding(self) -> tuple[int, int]:
        return tuple(max(0, s) for s in self._centre_shift)

    @property
    def _centre_shift(self) -> tuple[int, int]:
        # The k x k window at output o starts at o*s - pad and its centre is d*(k-1)/2 further:
        # a 1 x 1 conv reads the same input with padding pad - d*(k-1)/2 (cropped when negative).
        return tuple(pad - d * (k - 1) // 2 for pad, d, k in zip(self.padding, self.dilation, self.kernel_size))

    def _centre_taps(self, x: torch.Tensor) -> torch.Tensor:
        crop_h, crop_w = (max(0, -s) for s in self._centre_shift)
        if crop_h or crop_w:
            x = x[:, :, crop_h : x.shape[2] - crop_h, crop_w : x.shape[3] - crop_w]
        if self.p > 1:  # channel c = a*p + j moves to j*(C/p) + a: group j holds the channels c mod p = j
            x = x.unflatten(1, (self.in_channels // self.p, self.p)).transpose(1, 2).flatten(1, 2)
        return x

    @property
    def weight_params(self) -> int:
        """Weights of both branches (biases not counted)."""
        taps = math.prod(self.kernel_size)
        kxk = self.out_channels * self.in_channels // self.g * taps if self.g else 0
        return kxk + (self.out_channels * self.in_channels // self.p if self.p else 0)

    @property
    def dense_weight_params(self) -> int:
        """Weights of the dense conv this layer replaces."""
        return self.out_channels * self.in_channels * math.prod(self.kernel_size)

    @property
    def ratio(self) -> Fraction:
        """R = 1/g + 1/(p k^2): weights and MACs against the dense conv."""
        return ssc_ratio(self.g, self.p, self.kernel_size)

    def cost(self, input_shape, output_shape) -> OpCost:
        positions = math.prod(output_shape[2:])
        return OpCost(positions * self.dense_weight_params, positions * self.weight_params, exact=True)

    def extra_repr(self) -> str:
        return (
            f"layer={self.layer_name!r}, {self.in_channels} -> {self.out_channels}, kernel={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, g={self.g}, p={self.p}, R={float(self.ratio):.4f}"
        )
