"""Cross-neuron zero prediction (Shomron & Weiser; seed 002): the Spatial op.

The post-ReLU output map of a conv is tiled into p x p patches from (0, 0). ("ReLU" includes
ReLU-like clamps to [0, t], such as ReLU6: they too are 0 wherever the ReLU is.) A *pattern* marks
with 1 the positions computed first. When all of them are zero after ReLU, the 0-positions of
the patch are predicted zero and their MACs are skipped; otherwise they are computed too. A
*full mask* holds a pattern for every patch of every channel (all ones: no prediction).

This module is the reference semantics: it computes the dense conv, then zeroes what the rule
predicts, and counts what the prediction saved and what it got wrong. Compiled kernels
(codegen) skip the work for real and must match it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...ops.base import OpCost, conv_output_hw, conv_padding
from ...ops.registry import OpEntry, is_lowering, register

EDGES = ("pad", "compute")


def all_patterns(p: int, ones_range: tuple[int, int] | None = None) -> torch.Tensor:
    """Every non-degenerate p x p pattern (neither all ones nor all zeros) whose number of ones
    lies in ``ones_range`` (inclusive), as a (K, p, p) bool tensor, fewest ones first.

    ``all_patterns(2).shape == (14, 2, 2)``; p = 3 gives 510.
    """
    low, high = ones_range or (1, p * p - 1)
    low, high = max(low, 1), min(high, p * p - 1)
    patterns = [
        torch.tensor(bits, dtype=torch.bool).view(p, p)
        for bits in itertools.product((False, True), repeat=p * p)
        if low <= sum(bits) <= high
    ]
    if not patterns:
        return torch.zeros((0, p, p), dtype=torch.bool)
    stacked = torch.stack(patterns)
    order = sorted(range(len(patterns)), key=lambda i: (int(stacked[i].sum()), _bits_key(stacked[i])))
    return stacked[order]


def _bits_key(pattern: torch.Tensor) -> tuple:
    return tuple(int(b) for b in pattern.flatten().tolist())


def diagonal(p: int) -> torch.Tensor:
    """The baseline pattern of the paper: ones on the diagonal."""
    return torch.eye(p, dtype=torch.bool)


def padded_size(n: int, p: int) -> int:
    return -(-n // p) * p


def tile(patterns: torch.Tensor, channels: int, height: int, width: int, p: int) -> torch.Tensor:
    """A full mask (C, Hp, Wp) from patterns of shape (p, p) [one for all], (C, p, p) [per
    channel], (Hb, Wb, p, p) [per patch position] or (C, Hb, Wb, p, p) [per channel and patch]."""
    hb, wb = padded_size(height, p) // p, padded_size(width, p) // p
    leading = {2: (), 3: (channels,), 4: (hb, wb), 5: (channels, hb, wb)}.get(patterns.dim())
    if leading is None or tuple(patterns.shape) != (*leading, p, p):
        raise ValueError(f"patterns of shape {tuple(patterns.shape)} do not tile a {channels}x{height}x{width} map")
    if patterns.dim() == 3:
        patterns = patterns[:, None, None]
    elif patterns.dim() == 4:
        patterns = patterns[None]
    patterns = patterns.expand(channels, hb, wb, p, p)
    return patterns.permute(0, 1, 3, 2, 4).reshape(channels, hb * p, wb * p).contiguous()


def predicted_zero(
    out: torch.Tensor, mask: torch.Tensor, p: int, edge: str = "pad", channel_group: int = 1
) -> torch.Tensor:
    """Positions (N, C, H, W) that the rule predicts zero, for a post-ReLU map ``out``.

    ``mask`` is the full mask (C or 1, Hp, Wp). ``edge="pad"`` pads the map with zeros to a
    multiple of p (padding counts as zero); ``"compute"`` never predicts edge patches that
    stick out of the map. With ``channel_group`` g > 1, a patch is predicted zero in g
    consecutive channels only when the computed positions are zero in all g of them.
    """
    n, c, h, w = out.shape
    hp, wp = padded_size(h, p), padded_size(w, p)
    padded = F.pad(out, (0, wp - w, 0, hp - h))
    probe = padded.masked_fill(~mask, 0.0)
    fires = F.max_pool2d(probe, p) <= 0  # post-ReLU values are >= 0: max 0 means all zero
    if channel_group > 1:
        fires = fires.view(n, c // channel_group, channel_group, hp // p, wp // p)
        fires = fires.all(dim=2, keepdim=True).expand_as(fires).reshape(n, c, hp // p, wp // p)
    if edge == "compute":
        fires = fires.clone()
        if h % p:
            fires[..., -1, :] = False
        if w % p:
            fires[..., :, -1] = False
    predicted = fires.repeat_interleave(p, dim=2).repeat_interleave(p, dim=3) & ~mask
    return predicted[..., :h, :w]


@dataclass
class SpatialStats:
    """What prediction did on the data that flowed through the op (counts of activations)."""

    images: int = 0
    positions: int = 0  # activations in the real map, all images
    predicted: int = 0  # predicted zero: their MACs are saved
    mispredicted: int = 0  # predicted zero but truly non-zero: these cost accuracy
    computed_zeros: int = 0  # computed although zero: these cost only MACs

    def add(self, out: torch.Tensor, predicted: torch.Tensor) -> None:
        self.images += out.shape[0]
        self.positions += out.numel()
        self.predicted += int(predicted.sum())
        self.mispredicted += int((predicted & (out > 0)).sum())
        self.computed_zeros += int((~predicted & (out <= 0)).sum())


def bounded_relu(y: torch.Tensor, max_value: float | None = None) -> torch.Tensor:
    """ReLU, then at most ``max_value`` (None: no bound): min(relu(y), t).

    ATen runs relu6, hardtanh and clamp alike as one clamp, so ``torch.clamp(y, 0, t)`` gives
    the bits the replaced activation gave (the all-ones op equals the original exactly)."""
    return torch.relu(y) if max_value is None else torch.clamp(y, 0.0, max_value)


def _conv_block(block, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    y = block.conv(x)
    if block.bias is not None:
        y = y + block.bias
    if block.norm is not None:
        y = block.norm(y)
    if residual is not None:
        y = y + residual
    return bounded_relu(y, block.max_value)


def _checked_max_value(max_value: float | None) -> float | None:
    if max_value is not None and not max_value > 0:
        raise ValueError(f"the activation's upper bound must be > 0, got {max_value}")
    return None if max_value is None else float(max_value)


class DenseBlock(nn.Module):
    """conv [+ bias] [-> batch norm] [+ residual] -> ReLU [-> at most max_value]: what a
    ``SpatialConv`` replaced."""

    def __init__(
        self,
        conv: nn.Conv2d,
        bias: torch.Tensor | None = None,
        norm: nn.Module | None = None,
        max_value: float | None = None,
    ):
        super().__init__()
        self.conv, self.bias, self.norm = conv, bias, norm
        self.max_value = _checked_max_value(max_value)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return _conv_block(self, x, residual)

    def extra_repr(self) -> str:  # the repr keys layer timings: a bound must show in it
        return "" if self.max_value is None else f"max_value={self.max_value}"


class SpatialConv(nn.Module):
    """conv [+ bias] [-> batch norm] [+ residual] -> ReLU, with zero prediction on the output.

    It runs the same ops as the layers it replaces, so with an all-ones mask its output equals
    theirs exactly. ``residual`` (given to ``forward``) is a tensor added before the ReLU, as
    in residual blocks; ``max_value`` bounds the ReLU from above (ReLU6: 6.0).
    """

    kind = "spatial"

    def __init__(
        self,
        conv: nn.Conv2d,
        out_hw: tuple[int, int],
        patch_size: int = 2,
        norm: nn.Module | None = None,
        bias: torch.Tensor | None = None,
        edge: str = "pad",
        channel_group: int = 1,
        layer_name: str = "",
        max_value: float | None = None,
    ):
        super().__init__()
        if patch_size < 2:
            raise ValueError(f"patch size must be >= 2, got {patch_size}")
        if edge not in EDGES:
            raise ValueError(f"edge must be one of {EDGES}, got '{edge}'")
        if conv.out_channels % channel_group:
            raise ValueError(f"channel group {channel_group} does not divide {conv.out_channels} channels")
        self.conv = conv
        self.norm = norm
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None
        self.patch_size = patch_size
        self.edge = edge
        self.channel_group = channel_group
        self.layer_name = layer_name
        self.max_value = _checked_max_value(max_value)
        self.out_hw = tuple(out_hw)
        hp, wp = (padded_size(s, patch_size) for s in out_hw)
        self.register_buffer("mask", torch.ones(conv.out_channels, hp, wp, dtype=torch.bool))
        self.all_ones = True  # kept in step with the mask: an all-ones op exports as the dense layers
        self.stats = SpatialStats()
        self.track_stats = True

    def dense(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The output of the replaced layers, without prediction."""
        return _conv_block(self, x, residual)

    def dense_layer(self) -> nn.Module:
        """The layers this op replaced, as plain modules (its weights shared): the dense work
        that its kernel is timed against."""
        return DenseBlock(self.conv, self.bias, self.norm, self.max_value)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if torch.compiler.is_exporting() and is_lowering() and not self.all_ones:
            return self._custom_op(x, residual)
        out = self.dense(x, residual)
        if tuple(out.shape[-2:]) != self.out_hw:
            raise ValueError(
                f"Spatial op '{self.layer_name}' was built for {self.out_hw[0]}x{self.out_hw[1]} "
                f"output maps, got {out.shape[-2]}x{out.shape[-1]}"
            )
        if torch.compiler.is_exporting():  # no data-dependent branches or counters in a program
            if self.all_ones:  # predicts nothing: the layers it replaced, as they were
                return out
            return out.masked_fill(predicted_zero(out, self.mask, self.patch_size, self.edge, self.channel_group), 0.0)
        if self.all_ones:
            if self.track_stats:
                self.stats.add(out, torch.zeros_like(out, dtype=torch.bool))
            return out
        predicted = predicted_zero(out, self.mask, self.patch_size, self.edge, self.channel_group)
        if self.track_stats:
            self.stats.add(out, predicted)
        return out.masked_fill(predicted, 0.0)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Conv weight and bias with the added bias and batch norm folded in (for kernels)."""
        weight = self.conv.weight
        bias = self.conv.bias if self.conv.bias is not None else torch.zeros(self.conv.out_channels)
        if self.bias is not None:
            bias = bias + self.bias.flatten()
        if self.norm is not None:
            scale = torch.rsqrt(self.norm.running_var + self.norm.eps)
            if self.norm.weight is not None:
                scale = scale * self.norm.weight
            shift = -self.norm.running_mean * scale
            if self.norm.bias is not None:
                shift = shift + self.norm.bias
            weight = weight * scale[:, None, None, None]
            bias = bias * scale + shift
        return weight, bias

    def _custom_op(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        weight, bias = self.folded()
        conv = self.conv
        return torch.ops.sparsify.spatial_conv(
            x, weight, bias, self.mask, residual, list(conv.stride), list(conv_padding(conv)), list(conv.dilation),
            conv.groups, self.patch_size, self.edge == "compute", self.channel_group, self.max_value,
        )  # fmt: skip

    def set_mask(self, mask: torch.Tensor) -> None:
        """Install a full mask (C, Hp, Wp), or one (Hp, Wp) shared by every channel."""
        mask = mask.to(torch.bool)
        if mask.dim() == 2:
            mask = mask.expand_as(self.mask)
        if mask.shape != self.mask.shape:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not fit Spatial op '{self.layer_name}' "
                f"({tuple(self.mask.shape)})"
            )
        self.mask.copy_(mask)
        self.all_ones = bool(self.mask.all())

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.all_ones = bool(self.mask.all())

    @property
    def macs_per_position(self) -> int:
        return self.conv.in_channels // self.conv.groups * math.prod(self.conv.kernel_size)

    def cost(self, input_shape, output_shape) -> OpCost:
        dense = math.prod(output_shape[1:]) * self.macs_per_position
        if not self.stats.images:
            return OpCost(dense, dense, exact=False)
        saved = self.stats.predicted / self.stats.images * self.macs_per_position
        return OpCost(dense, round(dense - saved), exact=False)

    def reset_stats(self) -> None:
        self.stats = SpatialStats()

    def extra_repr(self) -> str:
        kept = float(self.mask.float().mean())
        bound = "" if self.max_value is None else f", max_value={self.max_value}"
        return f"layer={self.layer_name!r}, p={self.patch_size}, edge={self.edge}, ones={kept:.2f}{bound}"



@torch.library.custom_op("sparsify::spatial_conv", mutates_args=())
def spatial_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mask: torch.Tensor,
    residual: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    patch_size: int,
    compute_edges: bool,
    channel_group: int,
    max_value: float | None = None,
) -> torch.Tensor:
    """The Spatial op as one torch op (what exported programs carry to TVM): conv with folded
    bias and norm [+ residual] -> ReLU [-> at most max_value] -> zero prediction."""
    out = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if residual is not None:
        out = out + residual
    out = bounded_relu(out, max_value)
    edge = "compute" if compute_edges else "pad"
    return out.masked_fill(predicted_zero(out, mask, patch_size, edge, channel_group), 0.0)


@spatial_conv.register_fake
def _(x, weight, bias, mask, residual, stride, padding, dilation, groups, patch_size, compute_edges, channel_group,
      max_value=None):
    n, _, h, w = x.shape
    kh, kw = weight.shape[2:]
    out_h, out_w = conv_output_hw((h, w), (kh, kw), stride, padding, dilation)
    return x.new_empty((n, weight.shape[0], out_h, out_w))


register(OpEntry("sparsify::spatial_conv", SpatialConv, "sparsify_cnn.techniques.spatial.lowering:convert"))
