"""The Spatial op as a TIR kernel that skips the predicted work.

For each (image, channel group, patch): compute the pattern's 1-positions (conv, folded bias,
residual, ReLU); if every one of them is zero in every channel of the group, write zeros at the
0-positions without computing them; otherwise compute those too. The mask is an input, so one
kernel serves every mask of a layer shape.

This first kernel is scalar and branchy: it really skips the predicted MACs, and it is the
correctness baseline that faster schedules must match. A block without a residual add passes
zeros, so one kernel body serves every case; CPU and GPU differ only in how work is spread.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.script import tirx as T

from ...ops.base import conv_output_hw


def convert(node, importer):
    """TVM frontend converter for ``sparsify::spatial_conv`` (registered in ops.spatial)."""
    bb = importer.block_builder
    x, weight, bias, mask = (importer.env[arg] for arg in node.args[:4])
    stride, padding, dilation, groups, patch, compute_edges, channel_group = node.args[5:12]
    n, c_in, h, w = (int(v) for v in x.ty.shape)
    c_out, c_per_group, kh, kw = (int(v) for v in weight.ty.shape)
    out_h, out_w = conv_output_hw((h, w), (kh, kw), stride, padding, dilation)
    if node.args[4] is not None:
        residual = importer.env[node.args[4]]
    else:  # one kernel for both: a block without a residual adds zeros
        residual = bb.emit(relax.op.zeros(relax.ShapeExpr([n, c_out, out_h, out_w]), "float32"))
    target = tvm.target.Target.current(allow_none=True)
    kernel = spatial_kernel(
        (n, c_in, h, w), (c_out, c_per_group, kh, kw), (out_h, out_w), tuple(stride), tuple(padding),
        tuple(dilation), groups, patch, compute_edges, channel_group,
        gpu=target is not None and target.kind.name == "cuda",
    )  # fmt: skip
    gvar = bb.add_func(kernel, "sparsify_spatial_conv")
    out = relax.TensorType((n, c_out, out_h, out_w), "float32")
    return bb.emit(relax.call_tir(gvar, [x, weight, bias, mask, residual], out))


def spatial_kernel(x_shape, w_shape, out_hw, stride, padding, dilation, groups, p, compute_edges, g, gpu=False):
    """A PrimFunc for one layer shape (every size is a compile-time constant): one thread of
    work per (image, channel group, patch); on CPU the (image, group) loop runs in parallel, on
    GPU every patch is a thread."""
    N, CI, H, W = x_shape
    CO, CG, KH, KW = w_shape
    HO, WO = out_hw
    HB, WB = -(-HO // p), -(-WO // p)
    SH, SW = stride
    PH, PW = padding
    DH, DW = dilation
    OUT_PER_GROUP = CO // groups
    NG = CO // g  # channel groups of the prediction rule
    EDGE_H = HO % p != 0 and compute_edges  # the last patch row / column sticks out: never predict it
    EDGE_W = WO % p != 0 and compute_edges
    JOBS = N * NG * HB * WB
    THREADS = 128

    @T.macro
    def position(x, weight, bias, res, out, acc, img, c, y, xx):
        """out[img, c, y, xx] = relu(conv + bias + residual) at one position."""
        acc[0] = bias[c]
        for ci, ky, kx in T.grid(CG, KH, KW):
            if 0 <= y * SH - PH + ky * DH < H and 0 <= xx * SW - PW + kx * DW < W:
                acc[0] = acc[0] + x[img, c // OUT_PER_GROUP * CG + ci, y * SH - PH + ky * DH, xx * SW - PW + kx * DW] * weight[c, ci, ky, kx]
        acc[0] = T.max(acc[0] + res[img, c, y, xx], T.float32(0))
        out[img, c, y, xx] = acc[0]

    @T.macro
    def patch(x, weight, bias, mask, res, out, acc, live, img, group, by, bx):
        live[0] = 0
        # Pass 1: the pattern's 1-positions, in every channel of the group.
        for cc, dy, dx in T.grid(g, p, p):
            if mask[group * g + cc, by * p + dy, bx * p + dx] and by * p + dy < HO and bx * p + dx < WO:
                position(x, weight, bias, res, out, acc, img, group * g + cc, by * p + dy, bx * p + dx)
                if acc[0] > T.float32(0):
                    live[0] = 1
        if (EDGE_H and by == HB - 1) or (EDGE_W and bx == WB - 1):
            live[0] = 1
        # Pass 2: the 0-positions: zeros if the patch is predicted zero, else computed.
        for cc, dy, dx in T.grid(g, p, p):
            if not mask[group * g + cc, by * p + dy, bx * p + dx] and by * p + dy < HO and bx * p + dx < WO:
                if live[0] == 0:
                    out[img, group * g + cc, by * p + dy, bx * p + dx] = T.float32(0)
                else:
                    position(x, weight, bias, res, out, acc, img, group * g + cc, by * p + dy, bx * p + dx)

    @T.prim_func(private=True)
    def cpu_kernel(
        x: T.Buffer((N, CI, H, W), "float32"),
        weight: T.Buffer((CO, CG, KH, KW), "float32"),
        bias: T.Buffer((CO,), "float32"),
        mask: T.Buffer((CO, HB * p, WB * p), "bool"),
        res: T.Buffer((N, CO, HO, WO), "float32"),
        out: T.Buffer((N, CO, HO, WO), "float32"),
    ):
        T.func_attr({"tir.noalias": True, "tirx.is_scheduled": True})
        for job in T.parallel(N * NG):
            acc = T.alloc_buffer((1,), "float32", scope="local")
            live = T.alloc_buffer((1,), "int32", scope="local")
            for by, bx in T.grid(HB, WB):
                patch(x, weight, bias, mask, res, out, acc, live, job // NG, job % NG, by, bx)

    @T.prim_func(private=True)
    def gpu_kernel(
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

    return gpu_kernel if gpu else cpu_kernel
