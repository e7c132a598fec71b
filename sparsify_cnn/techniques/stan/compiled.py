"""STAN's skipping forward as a compiled CPU kernel that computes only the uncovered entries.

Coverage is per (sample, channel, position), so the entries left are scattered: with 32-64
channels almost every output position has some uncovered channel, and a GEMM over the
positions computes nearly everything. This kernel computes each uncovered entry as its own
dot product (``codegen/lowering/dots.py``: SIMD along the reduction, up to 4 positions of a
channel per pass over its weight row), so the work done is proportional to the entries left.

Layout, all made by torch per batch: the input zero-padded and channels-last, one image row
flattened as (W_p * C), so that a window row (kw pixels of C channels, dilation 1) is one
contiguous run (dilation > 1: one run of C per tap); the weight rows in the same (kh, kw, C)
order; ``out`` (B, H', W', T), channels-last as E is stored. Runs shorter than ``MIN_RUN`` (a
first conv over 3 channels: 15) would leave most SIMD lanes idle, so then each window is
first copied into one row of a column buffer, shared by every channel, and the dot products
run over K = kh * kw * C padded to the SIMD width. Which entries are covered arrives in one of
two forms:

- ``packed`` (STAN-lite): E's rows of bits as stored (entry e = (y W' + x) T + c is bit e % 8
  of byte e // 8); the kernel writes 0 at covered entries, so ``out`` needs no filling;
- one byte per entry (STAN): ``out`` holds the stored values beforehand and the kernel
  overwrites the uncovered entries only.

One (image, block of output rows) per parallel job; per channel, the block's uncovered
positions are listed without branches (coverage is close to random) and counted, then
computed: the channel's weight row stays in L1 for all of them, and blocks of 4 positions
fill up (per row, a channel often has only a few). The batch size is symbolic: one compiled
kernel serves every batch of a layer, the short last one included. The plain reference is
``conv._dense``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import tvm
from tvm.script import tirx as T

from ...codegen.lowering.dots import SIMD, accumulators, dot_products
from ...codegen.target import target_spec
from ...ops.base import conv_output_hw

POSITIONS_PER_JOB = 256
MIN_RUN = 32  # shorter runs go through a column buffer
COLUMN_BYTES = 16 * 1024  # a job's column buffer: stays in L1


@dataclass(frozen=True)
class SkipGeometry:
    """The sizes of one covered conv (groups 1), batch aside."""

    in_channels: int
    padded_hw: tuple[int, int]
    out_channels: int
    kernel: tuple[int, int]
    out_hw: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    packed: bool  # covered as E's bits, covered entries written as 0 (else bytes, kept)

    @property
    def segments(self) -> int:
        """Contiguous runs of one window in the padded input: a window row (dilation 1) or a tap."""
        return self.kernel[0] if self.dilation[1] == 1 else self.kernel[0] * self.kernel[1]

    @property
    def length(self) -> int:
        """Elements of one run."""
        return self.kernel[1] * self.in_channels if self.dilation[1] == 1 else self.in_channels

    @property
    def columns(self) -> bool:
        """Short runs: windows go through a column buffer (module docstring)."""
        return self.length < MIN_RUN

    @property
    def reduction(self) -> int:
        """K = kh * kw * C_in."""
        return self.segments * self.length

    @property
    def rows(self) -> tuple[int, int]:
        """(segments, length) of a weight row as the kernel reads it: one run of K padded to the
        SIMD width (columns), or the input's runs."""
        return (1, -(-self.reduction // SIMD) * SIMD) if self.columns else (self.segments, self.length)

    @property
    def block_rows(self) -> int:
        """Output rows per parallel job: up to 256 positions (columns: a buffer of up to 16 KiB)."""
        per_row = self.out_hw[1] * self.rows[1] * 4 if self.columns else self.out_hw[1]
        budget = COLUMN_BYTES if self.columns else POSITIONS_PER_JOB
        return max(1, min(self.out_hw[0], budget // per_row))

    @property
    def row_blocks(self) -> int:
        return -(-self.out_hw[0] // self.block_rows)

    @property
    def covered_shape(self) -> tuple[int, ...]:
        """Per sample: bytes of bits (packed), or (H', W', T) bytes."""
        entries = self.out_hw[0] * self.out_hw[1] * self.out_channels
        return (-(-entries // 8),) if self.packed else (*self.out_hw, self.out_channels)


def primfunc(g: SkipGeometry) -> tvm.tirx.PrimFunc:
    """The kernel for ``g``: (x padded (B, H_p, W_p * C), weight rows (T, *rows),
    bias (T,), covered (B, *covered_shape) uint8, out (B, H', W', T), computed (B * row_blocks,)
    int32: the entries each job computed)."""
    C, (HP, WP), CO = g.in_channels, g.padded_hw, g.out_channels
    KW, (HO, WO) = g.kernel[1], g.out_hw
    (SH, SW), (DH, DW) = g.stride, g.dilation
    SEG, R, K = g.segments, g.length, g.reduction
    (ROW_SEG, ROW_LEN), COLUMNS = g.rows, g.columns
    RB, BLOCKS = g.block_rows, g.row_blocks
    if DW == 1:
        row_of, column_of = (lambda s: s * DH), (lambda s: 0)
    else:
        row_of, column_of = (lambda s: s // KW * DH), (lambda s: s % KW * DW * C)

    def weight(wp, c, s, k):
        return wp[c, s, k]

    def run_of(xp, job, pos, s, k):
        """Element k of run s of the window of the block's position pos, in the padded input."""
        y = job % BLOCKS * RB + pos // WO
        return xp[job // BLOCKS, y * SH + row_of(s), pos % WO * SW * C + column_of(s) + k]

    def column_of_window(cols, job, pos, s, k):
        return cols[pos, k]

    def uncovered(covered, n, y, xx, c):
        if g.packed:
            entry = (y * WO + xx) * CO + c
            return T.Cast("int32", covered[n, entry // 8]) >> (entry % 8) & 1 == 0
        return covered[n, y, xx, c] == T.uint8(0)

    window = column_of_window if COLUMNS else run_of
    dots = dot_products(RB * WO, ROW_SEG, ROW_LEN, weight, window)
    ACC = accumulators(ROW_LEN)
    COVERED = g.covered_shape

    @T.prim_func
    def kernel(x_handle: T.handle, w_handle: T.handle, b_handle: T.handle, m_handle: T.handle, o_handle: T.handle,
               n_handle: T.handle):  # fmt: skip
        T.func_attr({"tir.noalias": True, "global_symbol": "stan_skip_conv"})
        N = T.int32()
        xp = T.match_buffer(x_handle, (N, HP, WP * C), "float32")
        wp = T.match_buffer(w_handle, (CO, ROW_SEG, ROW_LEN), "float32")
        bias = T.match_buffer(b_handle, (CO,), "float32")
        covered = T.match_buffer(m_handle, (N, *COVERED), "uint8")
        out = T.match_buffer(o_handle, (N, HO, WO, CO), "float32")
        computed = T.match_buffer(n_handle, (N * BLOCKS,), "int32")
        for job in T.parallel(N * BLOCKS):
            acc = T.alloc_buffer((ACC,), "float32")  # small "global" buffers: stack, then registers
            acc8 = T.alloc_buffer((SIMD,), "float32")
            vals = T.alloc_buffer((RB * WO,), "float32")
            todo = T.alloc_buffer((RB * WO,), "int32")  # the block's uncovered positions in a channel
            count = T.alloc_buffer((1,), "int32")
            cols = T.alloc_buffer((RB * WO if COLUMNS else 1, ROW_LEN), "float32")
            computed[job] = 0
            if COLUMNS:
                for pos, k in T.grid(RB * WO, ROW_LEN - K):
                    cols[pos, K + k] = T.float32(0)
                for pos, s in T.grid(RB * WO, SEG):
                    if job % BLOCKS * RB + pos // WO < HO:
                        for k in T.vectorized(R):
                            cols[pos, s * R + k] = run_of(xp, job, pos, s, k)
            for c in range(CO):
                count[0] = 0
                for r, xx in T.grid(RB, WO):
                    if job % BLOCKS * RB + r < HO:
                        todo[count[0]] = r * WO + xx
                        count[0] = count[0] + T.Cast(
                            "int32", uncovered(covered, job // BLOCKS, job % BLOCKS * RB + r, xx, c)
                        )
                        if g.packed:  # computed entries are overwritten below
                            out[job // BLOCKS, job % BLOCKS * RB + r, xx, c] = T.float32(0)
                computed[job] = computed[job] + count[0]
                if COLUMNS:
                    dots(wp, cols, acc, acc8, vals, todo, count, c, job)
                else:
                    dots(wp, xp, acc, acc8, vals, todo, count, c, job)
                for b in range(count[0]):
                    out[job // BLOCKS, job % BLOCKS * RB + todo[b] // WO, todo[b] % WO, c] = vals[b] + bias[c]

    return kernel


def _build(kernel: tvm.tirx.PrimFunc, name: str):
    """``kernel`` built for this CPU, as a callable."""
    module = tvm.IRModule({name: kernel})
    return tvm.compile(module, target=tvm.target.Target(target_spec("llvm")))[name]


@functools.cache
def compiled(g: SkipGeometry):
    """The kernel for ``g``, built for this CPU (once per process and geometry)."""
    return _build(primfunc(g), "stan_skip_conv")


def zeroing_primfunc(shape: tuple[int, int, int]) -> tvm.tirx.PrimFunc:
    """Zero, in place, the covered entries of a conv output (B, T, H', W') given E's bits."""
    CO, HO, WO = shape
    BYTES = -(-CO * HO * WO // 8)

    @T.prim_func
    def kernel(o_handle: T.handle, m_handle: T.handle):
        T.func_attr({"tir.noalias": True, "global_symbol": "stan_zero_covered"})
        N = T.int32()
        out = T.match_buffer(o_handle, (N, CO, HO, WO), "float32")
        bits = T.match_buffer(m_handle, (N, BYTES), "uint8")
        for job in T.parallel(N * HO):
            for c, xx in T.grid(CO, WO):
                out[job // HO, c, job % HO, xx] = T.if_then_else(
                    T.Cast("int32", bits[job // HO, ((job % HO * WO + xx) * CO + c) // 8])
                    >> (((job % HO * WO + xx) * CO + c) % 8)
                    & 1
                    == 1,
                    T.float32(0),
                    out[job // HO, c, job % HO, xx],
                )

    return kernel


@functools.cache
def zeroing(shape: tuple[int, int, int]):
    """``zeroing_primfunc(shape)``, built for this CPU (once per process and shape)."""
    return _build(zeroing_primfunc(shape), "stan_zero_covered")


def zero_covered(out: torch.Tensor, bits: torch.Tensor) -> None:
    """Write 0, in place, at the entries of ``out`` (B, T, H', W', contiguous) that E's rows of
    bits ``bits`` (B, bytes) mark covered: STAN-lite's skipping with the dense conv."""
    zeroing(tuple(out.shape[1:]))(tvm.runtime.from_dlpack(out), tvm.runtime.from_dlpack(bits.contiguous()))


def geometry(x_shape, weight_shape, padding, stride, dilation, packed: bool) -> SkipGeometry:
    """The geometry of a conv with these input and weight shapes and settings."""
    _, c, h, w = x_shape
    t, _, kh, kw = weight_shape
    out_hw = conv_output_hw((h, w), (kh, kw), stride, padding, dilation)
    padded_hw = (h + 2 * padding[0], w + 2 * padding[1])
    return SkipGeometry(c, padded_hw, t, (kh, kw), out_hw, tuple(stride), tuple(dilation), packed)


def skip_conv(x, weight, bias, covered, out, padding, stride, dilation, packed: bool) -> int:
    """Write conv(x) into ``out`` (B, H', W', T) at the uncovered entries; covered ones get 0
    (``packed``: ``covered`` is E's rows of bits, (B, bytes)) or keep their value (``covered``
    is (B, H', W', T) bool). Returns how many entries were computed."""
    g = geometry(x.shape, weight.shape, padding, stride, dilation, packed)
    (ph, pw), (batch, _, h, w) = padding, x.shape
    xp = x.new_zeros((batch, *g.padded_hw, g.in_channels))
    xp[:, ph : ph + h, pw : pw + w] = x.detach().permute(0, 2, 3, 1)
    rows = weight.detach().permute(0, 2, 3, 1).reshape(g.out_channels, 1, g.reduction)
    rows = F.pad(rows, (0, g.rows[1] - g.reduction)) if g.columns else rows.reshape(g.out_channels, *g.rows)
    bias = bias.detach() if bias is not None else torch.zeros(g.out_channels)
    covered = covered.contiguous().view(torch.uint8)
    computed = torch.empty(batch * g.row_blocks, dtype=torch.int32)
    args = (xp.view(batch, g.padded_hw[0], -1), rows, bias.contiguous(), covered, out, computed)
    compiled(g)(*(tvm.runtime.from_dlpack(a) for a in args))
    return int(computed.sum())
