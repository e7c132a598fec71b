"""The sizes of one conv, as the compile-time constants of a lowering's kernels."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConvGeometry:
    """Every size of one conv; each lowering adds its own (kept positions, patch size...)."""

    batch: int
    in_channels: int
    in_hw: tuple[int, int]
    out_channels: int
    kernel: tuple[int, int]
    out_hw: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    @property
    def reduction(self) -> int:
        """Length of one output's dot product: C_in/groups * kh * kw."""
        return self.in_channels // self.groups * self.kernel[0] * self.kernel[1]
