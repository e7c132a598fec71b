"""Perforated convolution (Figurnov et al., NIPS 2016; seed 003): the conv is evaluated only at a
set of kept output positions, shared by every channel and image, and the other positions are
interpolated from the kept ones.

Interpolation is one table for every scheme: output position i takes
``sum_j weight[i, j] * compact[index[i, j]]``, where ``compact`` holds the conv's values at the
kept positions. Nearest is one column (weight 1), zero is one column (weight 1 at kept positions,
0 elsewhere), barycentric is three columns (the vertices of the Delaunay triangle around the
point). The backward pass of the gather is a scatter-add, so perforated models train.

This module is the reference semantics (dense conv, then gather and interpolate); compiled
kernels (codegen) evaluate only the kept positions and must match it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...ops.base import OpCost, conv_geometry, conv_output_hw, conv_padding, tensor_digest
from ...ops.registry import OpEntry, is_lowering, register

INTERPOLATIONS = ("nearest", "zero", "barycentric")


def interpolation_table(kept: torch.Tensor, mode: str = "nearest", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, weight)`` of shape (H*W, J) for a kept-position mask ``kept`` (H, W): indices
    into the compact (row-major) list of kept positions and their weights.

    Nearest ties between equally distant kept points are broken at random (seeded), as in the
    paper. Barycentric falls back to nearest outside the convex hull of the kept points, and
    everywhere when they do not span a triangle.
    """
    if mode not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got '{mode}'")
    kept = kept.to(torch.bool)
    h, w = kept.shape
    points = kept.flatten().nonzero().flatten()
    if len(points) == 0:
        raise ValueError("a perforation mask must keep at least one position")
    compact_of = torch.full((h * w,), -1, dtype=torch.long)
    compact_of[points] = torch.arange(len(points))
    if mode == "zero":
        return compact_of.clamp(min=0)[:, None], kept.flatten().float()[:, None]
    nearest = _nearest(kept, points, seed)
    if mode == "nearest":
        return nearest[:, None], torch.ones(h * w, 1)
    return _barycentric(kept, points, compact_of, nearest)


def _nearest(kept: torch.Tensor, points: torch.Tensor, seed: int) -> torch.Tensor:
    """For every position, the compact index of its nearest kept position (Euclidean)."""
    h, w = kept.shape
    ky, kx = points // w, points % w
    generator = torch.Generator().manual_seed(seed)
    nearest = torch.empty(h * w, dtype=torch.long)
    positions = torch.arange(h * w)
    for chunk in positions.split(max(1, 2**22 // len(points))):  # bounded memory on large maps
        dy = (chunk // w)[:, None] - ky[None]
        dx = (chunk % w)[:, None] - kx[None]
        # Squared distances are integers: noise below 1 only reorders equal distances.
        noisy = (dy * dy + dx * dx).double() + 0.5 * torch.rand(dy.shape, generator=generator, dtype=torch.float64)
        nearest[chunk] = noisy.argmin(dim=1)
    nearest[points] = torch.arange(len(points))  # a kept position is its own nearest
    return nearest


def _barycentric(kept, points, compact_of, nearest) -> tuple[torch.Tensor, torch.Tensor]:
    from scipy.spatial import Delaunay, QhullError

    h, w = kept.shape
    index = torch.stack([nearest, nearest, nearest], dim=1)
    weight = torch.zeros(h * w, 3)
    weight[:, 0] = 1.0
    coords = np.stack([(points // w).numpy(), (points % w).numpy()], axis=1).astype(np.float64)
    if len(points) < 3:
        return index, weight
    try:
        triangulation = Delaunay(coords)
    except QhullError:  # collinear kept points span no triangle
        return index, weight
    everywhere = np.stack(np.divmod(np.arange(h * w), w), axis=1).astype(np.float64)
    simplex = triangulation.find_simplex(everywhere)
    inside = (simplex >= 0) & (compact_of.numpy() < 0)
    transform = triangulation.transform[simplex[inside]]  # (M, 3, 2): affine map to coordinates
    partial = np.einsum("mij,mj->mi", transform[:, :2], everywhere[inside] - transform[:, 2])
    bary = np.concatenate([partial, 1 - partial.sum(axis=1, keepdims=True)], axis=1)
    rows = torch.from_numpy(np.flatnonzero(inside))
    index[rows] = torch.from_numpy(triangulation.simplices[simplex[inside]]).long()
    weight[rows] = torch.from_numpy(bary).float()
    return index, weight


class PerforatedConv(nn.Module):
    """A conv evaluated at the kept output positions only, the rest interpolated.

    With every position kept it is the conv itself (same call, same output). ``kept`` is the
    (H', W') mask of kept output positions; ``set_kept`` installs one and rebuilds the table.
    """

    kind = "perforation"

    def __init__(self, conv: nn.Conv2d, out_hw: tuple[int, int], interpolation: str = "nearest", layer_name: str = "", seed: int = 0):
        super().__init__()
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got '{interpolation}'")
        self.conv = conv
        self.out_hw = tuple(int(s) for s in out_hw)
        self.interpolation = interpolation
        self.layer_name = layer_name
        self.seed = seed
        positions = math.prod(self.out_hw)
        self.register_buffer("kept", torch.ones(self.out_hw, dtype=torch.bool))
        self.register_buffer("kept_index", torch.arange(positions))
        self.register_buffer("interp_index", torch.arange(positions)[:, None])
        self.register_buffer("interp_weight", torch.ones(positions, 1))

    @property
    def positions(self) -> int:
        return math.prod(self.out_hw)

    def timing_key(self) -> dict:
        """What its compiled time depends on (the timing cache's key): the conv's sizes, the kept
        positions and the interpolation, not the weights."""
        kept = tensor_digest(self.kept.to(torch.uint8))
        return {"kind": "perforation", "conv": conv_geometry(self.conv), "kept": kept, "interpolation": self.interpolation}

    def dense_layer(self) -> nn.Conv2d:
        """The conv this op replaced (shared, not copied): the dense work it is timed against."""
        return self.conv

    @property
    def kept_count(self) -> int:
        return len(self.kept_index)

    @property
    def rate(self) -> float:
        """The perforation rate r = 1 - kept / positions."""
        return 1.0 - self.kept_count / self.positions

    def set_kept(self, kept: torch.Tensor) -> None:
        """Install a kept-position mask (H', W') and rebuild the interpolation table."""
        kept = kept.to(torch.bool)
        if tuple(kept.shape) != self.out_hw:
            raise ValueError(
                f"perforation mask of shape {tuple(kept.shape)} does not fit '{self.layer_name}' "
                f"({self.out_hw[0]}x{self.out_hw[1]} outputs)"
            )
        index, weight = interpolation_table(kept, self.interpolation, self.seed)
        self.kept = kept.clone()
        self.kept_index = kept.flatten().nonzero().flatten()
        self.interp_index, self.interp_weight = index, weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting() and is_lowering() and self.kept_count < self.positions:
            conv = self.conv
            bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
            return torch.ops.sparsify.perforated_conv(
                x, conv.weight, bias, self.kept_index, self.interp_index, self.interp_weight,
                list(conv.stride), list(conv_padding(conv)), list(conv.dilation), conv.groups,
            )  # fmt: skip
        y = self.conv(x)
        if tuple(y.shape[-2:]) != self.out_hw:
            raise ValueError(
                f"perforated conv '{self.layer_name}' was built for {self.out_hw[0]}x{self.out_hw[1]} "
                f"output maps, got {y.shape[-2]}x{y.shape[-1]}"
            )
        if self.kept_count == self.positions:
            return y  # nothing perforated: the conv itself
        # Kept values are read straight from the map: the table's indices composed with the kept ones.
        return interpolate(y.flatten(2), self.kept_index[self.interp_index], self.interp_weight).unflatten(2, self.out_hw)

    @property
    def macs_per_position(self) -> int:
        return self.conv.out_channels * self.conv.in_channels // self.conv.groups * math.prod(self.conv.kernel_size)

    def cost(self, input_shape, output_shape) -> OpCost:
        return OpCost(self.positions * self.macs_per_position, self.kept_count * self.macs_per_position, exact=True)

    def extra_repr(self) -> str:
        return f"layer={self.layer_name!r}, rate={self.rate:.3f}, interpolation={self.interpolation}"


def interpolate(values: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Full maps (N, C, P) from values (N, C, K) through an interpolation table: position i
    is ``sum_j weight[i, j] * values[..., index[i, j]]``."""
    n, c, k = values.shape
    rows = values.reshape(n * c, k)  # a 2-D column gather is the fast one on CPU
    out = None
    for j in range(index.shape[1]):
        term = rows.index_select(1, index[:, j])
        if torch.compiler.is_exporting() or not bool((weight[:, j] == 1).all()):  # exports stay data-independent
            term = term * weight[:, j]
        out = term if out is None else out + term
    return out.view(n, c, -1)


@torch.library.custom_op("sparsify::perforated_conv", mutates_args=())
def perforated_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    kept_index: torch.Tensor,
    interp_index: torch.Tensor,
    interp_weight: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> torch.Tensor:
    """The perforated conv as one torch op (what exported programs carry to TVM): the conv at
    the positions ``kept_index`` (row-major into the output map), then interpolation."""
    out = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return interpolate(out.flatten(2), kept_index[interp_index], interp_weight).view_as(out)


@perforated_conv.register_fake
def _(x, weight, bias, kept_index, interp_index, interp_weight, stride, padding, dilation, groups):
    n, _, h, w = x.shape
    kh, kw = weight.shape[2:]
    out_h, out_w = conv_output_hw((h, w), (kh, kw), stride, padding, dilation)
    return x.new_empty((n, weight.shape[0], out_h, out_w))


register(OpEntry("sparsify::perforated_conv", PerforatedConv, "sparsify_cnn.techniques.perforation.lowering:convert"))
