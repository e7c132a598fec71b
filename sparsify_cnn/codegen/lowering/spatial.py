"""The Spatial op as a TIR kernel that skips the predicted work.

For each (image, channel group, patch): compute the pattern's 1-positions (conv, folded bias,
residual, ReLU); if every one of them is zero in every channel of the group, write zeros at the
0-positions without computing them; otherwise compute those too. The mask is an input, so one
kernel serves every mask of a layer shape.

This first kernel is scalar and branchy: it really skips the predicted MACs, and it is the
correctness baseline that faster schedules (issue 7) must match.
"""

from __future__ import annotations

from tvm import relax
from tvm.script import tirx as T


def convert(node, importer):
    """TVM frontend converter for ``sparsify::spatial_conv`` (registered in ops.spatial)."""
    x, weight, bias, mask = (importer.env[arg] for arg in node.args[:4])
    residual = importer.env[node.args[4]] if node.args[4] is not None else None
    stride, padding, dilation, groups, patch, compute_edges, channel_group = node.args[5:12]
    n, c_in, h, w = (int(v) for v in x.ty.shape)
    c_out, c_per_group, kh, kw = (int(v) for v in weight.ty.shape)
    out_h = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    kernel = spatial_kernel(
        (n, c_in, h, w), (c_out, c_per_group, kh, kw), (out_h, out_w), tuple(stride), tuple(padding),
        tuple(dilation), groups, patch, compute_edges, channel_group, residual is not None,
    )  # fmt: skip
    gvar = importer.block_builder.add_func(kernel, "sparsify_spatial_conv")
    args = [x, weight, bias, mask] + ([residual] if residual is not None else [])
    out = relax.TensorType((n, c_out, out_h, out_w), "float32")
    return importer.block_builder.emit(relax.call_tir(gvar, args, out))


def spatial_kernel(x_shape, w_shape, out_hw, stride, padding, dilation, groups, p, compute_edges, g, residual):
    """A PrimFunc for one layer shape (all sizes are compile-time constants)."""
    N, CI, H, W = x_shape
    CO, CG, KH, KW = w_shape
    HO, WO = out_hw
    HB, WB = -(-HO // p), -(-WO // p)
    SH, SW = stride
    PH, PW = padding
    DH, DW = dilation
    OUT_PER_GROUP = CO // groups
    EDGE_H = HO % p != 0 and compute_edges  # the last patch row / column sticks out: never predict it
    EDGE_W = WO % p != 0 and compute_edges
    G = g

    @T.prim_func(private=True)
    def kernel_with_residual(
        x: T.Buffer((N, CI, H, W), "float32"),
        weight: T.Buffer((CO, CG, KH, KW), "float32"),
        bias: T.Buffer((CO,), "float32"),
        mask: T.Buffer((CO, HB * p, WB * p), "bool"),
        res: T.Buffer((N, CO, HO, WO), "float32"),
        out: T.Buffer((N, CO, HO, WO), "float32"),
    ):
        T.func_attr({"tir.noalias": True})
        for job in T.parallel(N * (CO // G)):
            live = T.alloc_buffer((1,), "int32", scope="local")
            acc = T.alloc_buffer((1,), "float32", scope="local")
            for by, bx in T.grid(HB, WB):
                live[0] = 0
                # Pass 1: the pattern's 1-positions, in every channel of the group.
                for cc, dy, dx in T.grid(G, p, p):
                    if mask[(job % (CO // G)) * G + cc, by * p + dy, bx * p + dx]:
                        if by * p + dy < HO and bx * p + dx < WO:
                            acc[0] = bias[(job % (CO // G)) * G + cc]
                            for ci, ky, kx in T.grid(CG, KH, KW):
                                if 0 <= (by * p + dy) * SH - PH + ky * DH < H and 0 <= (bx * p + dx) * SW - PW + kx * DW < W:
                                    acc[0] = acc[0] + x[job // (CO // G), ((job % (CO // G)) * G + cc) // OUT_PER_GROUP * CG + ci,
                                        (by * p + dy) * SH - PH + ky * DH, (bx * p + dx) * SW - PW + kx * DW] * weight[(job % (CO // G)) * G + cc, ci, ky, kx]
                            acc[0] = T.max(acc[0] + res[job // (CO // G), (job % (CO // G)) * G + cc, by * p + dy, bx * p + dx], T.float32(0))
                            out[job // (CO // G), (job % (CO // G)) * G + cc, by * p + dy, bx * p + dx] = acc[0]
                            if acc[0] > T.float32(0):
                                live[0] = 1
                if (EDGE_H and by == HB - 1) or (EDGE_W and bx == WB - 1):
                    live[0] = 1
                # Pass 2: the 0-positions, computed only when the patch is live.
                for cc, dy, dx in T.grid(G, p, p):
                    if not mask[(job % (CO // G)) * G + cc, by * p + dy, bx * p + dx]:
                        if by * p + dy < HO and bx * p + dx < WO:
                            if live[0] == 0:
                                out[job // (CO // G), (job % (CO // G)) * G + cc, by * p + dy, bx * p + dx] = T.float32(0)
                            else:
                                acc[0] = bias[(job % (CO // G)) * G + cc]
                                for ci, ky, kx in T.grid(CG, KH, KW):
                                    if 0 <= (by * p + dy) * SH - PH + ky * DH < H and 0 <= (bx * p + dx) * SW - PW + kx * DW < W:
                                        acc[0] = acc[0] + x[job // (CO // G), ((job % (CO // G)) * G + cc) // OUT_PER_GROUP * CG + ci,
                                            (by * p + dy) * SH - PH + ky * DH, (bx * p + dx) * SW - PW + kx * DW] * weight[(job % (CO // G)) * G + cc, ci, ky, kx]
                                out[job // (CO // G), (job % (CO // G)) * G + cc, by * p + dy, bx * p + dx] = T.max(
                                    acc[0] + res[job // (CO // G), (job % (CO // G)) * G + cc, by * p + dy, bx * p + dx], T.float32(0))

    @T.prim_func(private=True)
    def kernel(
        x: T.Buffer((N, CI, H, W), "float32"),
        weight: T.Buffer((CO, CG, KH, KW), "float32"),
        bias: T.Buffer((CO,), "float32"),
        mask: T.Buffer((CO, HB * p, WB * p), "bool"),
        out: T.Buffer((N, CO, HO, WO), "float32"),
    ):
        T.func_attr({"tir.noalias": True})
        for job in T.parallel(N * (CO // G)):
            live = T.alloc_buffer((1,), "int32", scope="local")
            acc = T.alloc_buffer((1,), "float32", scope="local")
            for by, bx in T.grid(HB, WB):
                live[0] = 0
                for cc, dy, dx in T.grid(G, p, p):
                    if mask[(job % (CO // G)) * G + cc, by * p + dy, bx * p + dx]:
                        if by * p + dy < HO and bx * p + dx < WO:
                            acc[0] = bias[(job % (CO // G)) * G + cc]
                            for ci, ky, kx in T.grid(CG, KH, KW):
                                if 0 <= (by * p + dy) * SH - PH + ky * DH < H and 0 <= (bx * p + dx) * SW - PW + kx * DW < W:
                                    acc[0] = acc[0] + x[job // (CO // G), ((job % (CO // G)) * G + cc) // OUT_PER_GROUP * CG + ci,
                                        (by * p + dy) * SH - PH + ky * DH, (bx * p + dx) * SW - PW + kx * DW] * weight[(job % (CO // G)) * G + cc, ci, ky, kx]
                            acc[0] = T.max(acc[0], T.float32(0))
                            out[job // (CO // G), (job % (CO // G)) * G + cc, by * p + dy, bx * p + dx] = acc[0]
                            if acc[0] > T.float32(0):
                                live[0] = 1
                if (EDGE_H and by == HB - 1) or (EDGE_W and bx == WB - 1):
                    live[0] = 1
                for cc, dy, dx in T.grid(G, p, p):
                    if not mask[(job % (CO // G)) * G + cc, by * p + dy, bx * p + dx]:
                        if by * p + dy < HO and bx * p + dx < WO:
                            if live[0] == 0:
                                out[job // (CO // G), (job % (CO // G)) * G + cc, by * p + dy, bx * p + dx] = T.float32(0)
                            else:
                                acc[0] = bias[(job % (CO // G)) * G + cc]
                                for ci, ky, kx in T.grid(CG, KH, KW):
                                    if 0 <= (by * p + dy) * SH - PH + ky * DH < H and 0 <= (bx * p + dx) * SW - PW + kx * DW < W:
                                        acc[0] = acc[0] + x[job // (CO // G), ((job % (CO // G)) * G + cc) // OUT_PER_GROUP * CG + ci,
                                            (by * p + dy) * SH - PH + ky * DH, (bx * p + dx) * SW - PW + kx * DW] * weight[(job % (CO // G)) * G + cc, ci, ky, kx]
                                out[job // (CO // G), (job % (CO // G)) * G + cc, by * p + dy, bx * p + dx] = T.max(acc[0], T.float32(0))

    return kernel_with_residual if residual else kernel
