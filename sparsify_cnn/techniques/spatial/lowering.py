"""The Spatial op as TIR kernels that skip the predicted work.

Prediction is per (channel, patch), so the work left is sparse in a pattern that no dense
tile covers: with 32 channels, a patch of 2x2 outputs is almost never predicted zero in 8
channels at once (measured on CQ), and per-element predication inside a dense loop nest
destroys vectorisation. The CPU kernel therefore computes every output it needs as one dot
product of length K = C_in/groups * kh * kw (``dots.py``), and the skipping happens between
dot products, where a branch costs nothing against K multiply-adds.

CPU, per (image, row of patches) in parallel, per patch:

1. The patch's input windows are copied once into a small column buffer, one row of K per
   output position (plain copies inside the map, checked ones with zeros on its border);
   every channel then reads them from L1.
2. For each prediction group (g consecutive channels): the pattern's 1-positions are computed
   (dot product with the channel's packed weight row, folded bias, residual, ReLU [capped at
   the activation's upper bound, e.g. 6 for ReLU6]); if all of
   them are zero in all g channels, the 0-positions are written as zeros without being
   computed, otherwise they are computed too.

The weights are packed once (at compile time on CPU) into rows of K padded to a multiple of
the SIMD width. The mask is an input, so one compiled kernel serves every mask of a layer
shape (the measured-cost search times many masks).

GPU: one thread per (image, channel group, patch), scalar. A block without a residual add
passes zeros there.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax, te
from tvm.script import tirx as T

from ...codegen.lowering.dots import SIMD, accumulators, dot_products
from ...codegen.lowering.geometry import ConvGeometry
from ...ops.base import conv_output_hw


@dataclass(frozen=True)
class SpatialGeometry(ConvGeometry):
    """Every size of one Spatial op (compile-time constants of its kernel)."""

    patch: int
    compute_edges: bool
    channel_group: int
    residual: bool
    max_value: float | None = None  # the ReLU's upper bound (ReLU6: 6.0; None: none)

    @property
    def packed_reduction(self) -> int:
        """K padded with zeros to a multiple of the SIMD width: a packed weight row."""
        return -(-self.reduction // SIMD) * SIMD

    @property
    def patches_hw(self) -> tuple[int, int]:
        return -(-self.out_hw[0] // self.patch), -(-self.out_hw[1] // self.patch)


def convert(node, importer):
    """TVM frontend converter for ``sparsify::spatial_conv`` (registered in ops.spatial)."""
    bb = importer.block_builder
    x, weight, bias, mask = (importer.env[arg] for arg in node.args[:4])
    residual = importer.env[node.args[4]] if node.args[4] is not None else None
    stride, padding, dilation, groups, patch, compute_edges, channel_group = node.args[5:12]
    max_value = node.args[12] if len(node.args) > 12 else node.kwargs.get("max_value")
    n, c_in, h, w = (int(v) for v in x.ty.shape)
    c_out, _, kh, kw = (int(v) for v in weight.ty.shape)
    out_hw = conv_output_hw((h, w), (kh, kw), stride, padding, dilation)
    geometry = SpatialGeometry(
        n, c_in, (h, w), c_out, (kh, kw), out_hw, tuple(stride), tuple(padding), tuple(dilation), int(groups),
        int(patch), bool(compute_edges), int(channel_group), residual is not None,
        None if max_value is None else float(max_value),
    )  # fmt: skip
    out = relax.TensorType((n, c_out, *out_hw), "float32")
    target = tvm.target.Target.current(allow_none=True)
    if target is not None and target.kind.name == "cuda":
        if residual is None:
            residual = bb.emit(relax.op.zeros(relax.ShapeExpr([n, c_out, *out_hw]), "float32"))
        gvar = bb.add_func(gpu_kernel(geometry), "sparsify_spatial_conv")
        return bb.emit(relax.call_tir(gvar, [x, weight, bias, mask, residual], out))
    packed = bb.emit_te(lambda w: pack_weight(w, geometry), weight, primfunc_name_hint="spatial_pack_weight")
    # Weight-only work, lifted to compile time on CPU (build.pack_weights): nothing to tune.
    pack = bb.lookup_binding(packed).args[0]
    bb.update_func(pack, bb.get()[pack].with_attr("tirx.is_scheduled", True))
    gvar = bb.add_func(cpu_kernel(geometry), "sparsify_spatial_conv")
    args = [x, packed, bias, mask] + ([residual] if residual is not None else [])
    return bb.emit(relax.call_tir(gvar, args, out))


def pack_weight(weight: te.Tensor, g: SpatialGeometry) -> te.Tensor:
    """(C_out, K padded): each filter as one row over (channel, ky, kx), zeros after K."""
    (kh, kw), k = g.kernel, g.reduction

    def value(o, j):
        inside = j < k
        j = tvm.tirx.min(j, k - 1)
        return tvm.tirx.if_then_else(
            inside, weight[o, j // (kh * kw), j // kw % kh, j % kw], tvm.tirx.const(0, "float32")
        )

    return te.compute((g.out_channels, g.packed_reduction), value, name="packed_weight")


def cpu_kernel(g: SpatialGeometry):
    """The CPU PrimFunc for ``g``: inputs (x, packed weight, bias, mask[, residual])."""
    N, CI = g.batch, g.in_channels
    H, W = g.in_hw
    PH, PW = g.padding
    CO, (KH, KW), (HO, WO) = g.out_channels, g.kernel, g.out_hw
    (SH, SW), (DH, DW), p, G = g.stride, g.dilation, g.patch, g.channel_group
    HB, WB = g.patches_hw
    CG, OPG = CI // g.groups, CO // g.groups
    GROUPS, K, KP = g.groups, g.reduction, g.packed_reduction
    P2, NG = p * p, CO // G
    EDGE_H = HO % p != 0 and g.compute_edges  # the last patch row / column sticks out: never predicted
    EDGE_W = WO % p != 0 and g.compute_edges
    BOUNDED, TOP = g.max_value is not None, g.max_value or 0.0

    dots = dot_products(P2, 1, KP, lambda wp, c, s, k: wp[c, k], lambda cols, grp, pos, s, k: cols[grp, pos, k])
    ACC = accumulators(KP)

    @T.macro
    def plus_residual(bias, res, vals, b, img, c, y, xx):
        """relu(vals[b] + bias + residual) [at most TOP] at output (img, c, y, xx)."""
        vals[b] = T.max(vals[b] + bias[c] + res[img, c, y, xx], T.float32(0))
        if BOUNDED:  # decided when parsing
            vals[b] = T.min(vals[b], T.float32(TOP))

    @T.macro
    def plain(bias, res, vals, b, img, c, y, xx):
        """relu(vals[b] + bias) [at most TOP] (``res`` is None)."""
        vals[b] = T.max(vals[b] + bias[c], T.float32(0))
        if BOUNDED:
            vals[b] = T.min(vals[b], T.float32(TOP))

    activation = plus_residual if g.residual else plain

    @T.macro
    def positions(mask, todo, count, c, by, bx, ones):
        """todo[0:count] = the positions of patch (by, bx) inside the map where c's mask is
        ``ones`` (1 or 0)."""
        count[0] = 0
        for pos in range(P2):
            if (T.Cast("int32", mask[c, by * p + pos // p, bx * p + pos % p]) == ones
                    and by * p + pos // p < HO and bx * p + pos % p < WO):  # fmt: skip
                todo[count[0]] = pos
                count[0] = count[0] + 1

    @T.macro
    def compute(wp, cols, acc, acc8, vals, todo, count, bias, res, out, img, c, by, bx):
        """out and vals at the positions todo[0:count] of patch (by, bx) in channel c."""
        dots(wp, cols, acc, acc8, vals, todo, count, c, c // OPG)
        for b in range(count[0]):
            activation(bias, res, vals, b, img, c, by * p + todo[b] // p, bx * p + todo[b] % p)
            out[img, c, by * p + todo[b] // p, bx * p + todo[b] % p] = vals[b]

    @T.macro
    def body(x, wp, bias, mask, res, out):
        for job in T.parallel(N * HB):
            cols = T.alloc_buffer((GROUPS, P2, KP), "float32")
            acc = T.alloc_buffer((ACC,), "float32")  # small "global" buffers: stack, then registers
            acc8 = T.alloc_buffer((SIMD,), "float32")
            vals = T.alloc_buffer((P2,), "float32")
            todo = T.alloc_buffer((P2,), "int32")  # the positions of a patch to compute in a channel
            count = T.alloc_buffer((1,), "int32")
            live = T.alloc_buffer((1,), "int32")
            for grp, pos, k in T.grid(GROUPS, P2, KP - K):
                cols[grp, pos, K + k] = T.float32(0)
            for bx in range(WB):
                # 1. the patch's windows, a row of K per output position: plain copies inside
                # the map, checked ones (zeros outside) on its border
                if (job % HB * p * SH - PH >= 0 and bx * p * SW - PW >= 0
                        and (job % HB * p + p - 1) * SH - PH + (KH - 1) * DH < H
                        and (bx * p + p - 1) * SW - PW + (KW - 1) * DW < W):  # fmt: skip
                    for grp, pos, ci, ky in T.grid(GROUPS, P2, CG, KH):
                        for kx in T.vectorized(KW):
                            cols[grp, pos, (ci * KH + ky) * KW + kx] = x[
                                job // HB, grp * CG + ci,
                                (job % HB * p + pos // p) * SH - PH + ky * DH, (bx * p + pos % p) * SW - PW + kx * DW,
                            ]  # fmt: skip
                else:
                    for grp, pos in T.grid(GROUPS, P2):
                        if job % HB * p + pos // p < HO and bx * p + pos % p < WO:
                            for ci, ky in T.grid(CG, KH):
                                for kx in T.vectorized(KW):
                                    cols[grp, pos, (ci * KH + ky) * KW + kx] = T.if_then_else(
                                        0 <= (job % HB * p + pos // p) * SH - PH + ky * DH < H
                                        and 0 <= (bx * p + pos % p) * SW - PW + kx * DW < W,
                                        x[job // HB, grp * CG + ci,
                                          T.max(T.min((job % HB * p + pos // p) * SH - PH + ky * DH, H - 1), 0),
                                          T.max(T.min((bx * p + pos % p) * SW - PW + kx * DW, W - 1), 0)],
                                        T.float32(0),
                                    )  # fmt: skip
                for group in range(NG):
                    live[0] = 0
                    # 2. (phase 0) the pattern's 1-positions in the group's channels; 3. (phase 1)
                    # the 0-positions: zeros when predicted, else computed. One loop, so that the
                    # dot products are generated once.
                    for phase in range(2):
                        if phase == 1 and ((EDGE_H and job % HB == HB - 1) or (EDGE_W and bx == WB - 1)):
                            live[0] = 1
                        for cc in range(G):
                            positions(mask, todo, count, group * G + cc, job % HB, bx, 1 - phase)
                            if phase == 1 and live[0] == 0:
                                for b in range(count[0]):
                                    out[
                                        job // HB, group * G + cc, job % HB * p + todo[b] // p, bx * p + todo[b] % p
                                    ] = T.float32(0)
                            else:
                                compute(wp, cols, acc, acc8, vals, todo, count, bias, res, out, job // HB,
                                        group * G + cc, job % HB, bx)  # fmt: skip
                                if phase == 0:
                                    for b in range(count[0]):
                                        if vals[b] > T.float32(0):
                                            live[0] = 1

    if g.residual:

        @T.prim_func(private=True)
        def kernel(
            x: T.Buffer((N, CI, H, W), "float32"),
            wp: T.Buffer((CO, KP), "float32"),
            bias: T.Buffer((CO,), "float32"),
            mask: T.Buffer((CO, HB * p, WB * p), "bool"),
            res: T.Buffer((N, CO, HO, WO), "float32"),
            out: T.Buffer((N, CO, HO, WO), "float32"),
        ):
            T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True})
            body(x, wp, bias, mask, res, out)

    else:  # a separate signature: parsing a function parses its whole body

        @T.prim_func(private=True)
        def kernel(
            x: T.Buffer((N, CI, H, W), "float32"),
            wp: T.Buffer((CO, KP), "float32"),
            bias: T.Buffer((CO,), "float32"),
            mask: T.Buffer((CO, HB * p, WB * p), "bool"),
            out: T.Buffer((N, CO, HO, WO), "float32"),
        ):
            T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True})
            body(x, wp, bias, mask, None, out)

    return kernel


def gpu_kernel(g: SpatialGeometry):
    """The CUDA PrimFunc for ``g``: inputs (x, weight, bias, mask, residual); every (image,
    channel group, patch) is one thread."""
    N, CI, (H, W) = g.batch, g.in_channels, g.in_hw
    CO, (KH, KW), (HO, WO) = g.out_channels, g.kernel, g.out_hw
    (SH, SW), (PH, PW), (DH, DW), p, G = g.stride, g.padding, g.dilation, g.patch, g.channel_group
    HB, WB = g.patches_hw
    CG, OPG = CI // g.groups, CO // g.groups
    NG = CO // G
    EDGE_H = HO % p != 0 and g.compute_edges
    EDGE_W = WO % p != 0 and g.compute_edges
    BOUNDED, TOP = g.max_value is not None, g.max_value or 0.0
    JOBS = N * NG * HB * WB
    THREADS = 128

    @T.macro
    def position(x, weight, bias, res, out, acc, img, c, y, xx):
        """out[img, c, y, xx] = relu(conv + bias + residual) [at most TOP] at one position."""
        acc[0] = bias[c]
        for ci, ky, kx in T.grid(CG, KH, KW):
            if 0 <= y * SH - PH + ky * DH < H and 0 <= xx * SW - PW + kx * DW < W:
                acc[0] = (
                    acc[0]
                    + x[img, c // OPG * CG + ci, y * SH - PH + ky * DH, xx * SW - PW + kx * DW] * weight[c, ci, ky, kx]
                )
        acc[0] = T.max(acc[0] + res[img, c, y, xx], T.float32(0))
        if BOUNDED:  # decided when parsing
            acc[0] = T.min(acc[0], T.float32(TOP))
        out[img, c, y, xx] = acc[0]

    @T.macro
    def patch(x, weight, bias, mask, res, out, acc, live, img, group, by, bx):
        live[0] = 0
        for cc, dy, dx in T.grid(G, p, p):
            if mask[group * G + cc, by * p + dy, bx * p + dx] and by * p + dy < HO and bx * p + dx < WO:
                position(x, weight, bias, res, out, acc, img, group * G + cc, by * p + dy, bx * p + dx)
                if acc[0] > T.float32(0):
                    live[0] = 1
        if (EDGE_H and by == HB - 1) or (EDGE_W and bx == WB - 1):
            live[0] = 1
        for cc, dy, dx in T.grid(G, p, p):
            if not mask[group * G + cc, by * p + dy, bx * p + dx] and by * p + dy < HO and bx * p + dx < WO:
                if live[0] == 0:
                    out[img, group * G + cc, by * p + dy, bx * p + dx] = T.float32(0)
                else:
                    position(x, weight, bias, res, out, acc, img, group * G + cc, by * p + dy, bx * p + dx)

    @T.prim_func(private=True)
    def kernel(
        x: T.Buffer((N, CI, H, W), "float32"),
        weight: T.Buffer((CO, CG, KH, KW), "float32"),
        bias: T.Buffer((CO,), "float32"),
        mask: T.Buffer((CO, HB * p, WB * p), "bool"),
        res: T.Buffer((N, CO, HO, WO), "float32"),
        out: T.Buffer((N, CO, HO, WO), "float32"),
    ):
        T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True})
        for block in T.thread_binding((JOBS + THREADS - 1) // THREADS, thread="blockIdx.x"):
            for thread in T.thread_binding(THREADS, thread="threadIdx.x"):
                acc = T.alloc_buffer((1,), "float32", scope="local")
                live = T.alloc_buffer((1,), "int32", scope="local")
                if block * THREADS + thread < JOBS:
                    patch(x, weight, bias, mask, res, out, acc, live,
                          (block * THREADS + thread) // (NG * HB * WB), (block * THREADS + thread) // (HB * WB) % NG,
                          (block * THREADS + thread) // WB % HB, (block * THREADS + thread) % WB)  # fmt: skip

    return kernel
