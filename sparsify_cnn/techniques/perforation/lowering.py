"""The perforated conv as Relax: the conv is computed at the kept output positions only.

Each step is a kernel that TVM schedules (our CPU rules, dlight on CUDA, MetaSchedule when
tuning):

1. The input is padded once, densely (in a network this fuses with the ops before it), so the
   windows read after it need no bounds checks.
2. On CPU, where a group's output channels come in whole SIMD blocks: an implicit GEMM. The
   filters are packed once, at compile time, as (groups, C_out/groups/b, C_in/groups*kh*kw, b);
   each kept position's window is read in place from the flat padded map at its start; the
   compact output is blocked, (groups, C_out/groups/b, columns, b): the register-tiled
   microkernel of a blocked conv (``cpu_schedules.BlockedMatmul``), a vector of weights times a
   broadcast input value. Its columns (N*K, images stacked) are padded to a whole number of
   register tiles (``blocked_columns``). Where a group's input channels come in whole blocks
   too, the input is taken in the blocked layout of the dense convs (NCHW{b}c) and the windows
   are read with the channels' block innermost (``implicit_gemm_blocked``); the interpolation
   then writes blocks, unblocked after it.
3. Otherwise (CUDA, odd channel counts): ``im2col`` of the kept positions, a
   (groups, C_in/groups*kh*kw, N*K) matrix gathered from the flat padded map, then one GEMM per
   group, the bias fused in: (groups, C_out/groups, N*K). On CPU the weights are read in place,
   so a tuned kernel may take them packed (``build.pack_weights``); on CUDA a plain matmul for
   dlight's GPU rule.
4. Interpolation: output position p is ``sum_j weight[p, j] * compact[index[p, j]]`` (J = 1
   or 3), written straight into the NCHW map; the elementwise ops after the conv fuse into it.

Window starts and an int32 copy of the interpolation index are computed from the tables by
kernels that TVM folds into constants at compile time. The kernels take the tables as inputs,
so one compiled kernel serves every mask with the same number of kept positions, and clamp
every entry into range: MetaSchedule's runner calls kernels with random inputs, and random
indices must not read out of bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax, te, tirx

from ...codegen.cpu_schedules import accumulator_registers, blocked_columns
from ...codegen.lowering.dots import SIMD
from ...codegen.lowering.geometry import ConvGeometry
from ...ops.base import conv_output_hw

INJECTIVE = 2  # TVM's OpPatternKind kInjective
MATMUL_COLUMNS = 16  # on CUDA, the GEMM is a plain matmul from this many columns (N * K) on


@dataclass(frozen=True)
class PerforatedGeometry(ConvGeometry):
    """Every size of one perforated conv (compile-time constants of its kernels)."""

    kept: int  # K, kept output positions

    @property
    def positions(self) -> int:
        return self.out_hw[0] * self.out_hw[1]

    @property
    def padded_hw(self) -> tuple[int, int]:
        return self.in_hw[0] + 2 * self.padding[0], self.in_hw[1] + 2 * self.padding[1]


def convert(node, importer):
    """TVM frontend converter for ``sparsify::perforated_conv`` (registered in ops.perforation)."""
    bb = importer.block_builder
    x, weight, bias, kept_index, interp_index, interp_weight = (importer.env[arg] for arg in node.args[:6])
    stride, padding, dilation, groups = node.args[6:10]
    n, c_in, h, w = (int(v) for v in x.ty.shape)
    c_out, _, kh, kw = (int(v) for v in weight.ty.shape)
    out_h, out_w = conv_output_hw((h, w), (kh, kw), stride, padding, dilation)
    geometry = PerforatedGeometry(
        n, c_in, (h, w), c_out, (kh, kw), (out_h, out_w), tuple(stride), tuple(padding), tuple(dilation), int(groups),
        int(kept_index.ty.shape[0]),
    )  # fmt: skip
    return emit_perforated_conv(bb, geometry, x, weight, bias, kept_index, interp_index, interp_weight)


def emit_perforated_conv(bb, geometry: PerforatedGeometry, x, weight, bias, kept_index, interp_index, interp_weight):
    """Emit the steps into ``bb``; return the (N, C_out, H', W') output."""
    g = geometry
    (ph, pw), (hp, wp) = g.padding, g.padded_hw
    target = tvm.target.Target.current(allow_none=True)
    kind = target.kind.name if target is not None else None
    block = SIMD if kind == "llvm" and (g.out_channels // g.groups) % SIMD == 0 else None
    if block and (g.in_channels // g.groups) % block == 0:
        return _emit_blocked(bb, g, target, x, weight, bias, kept_index, interp_index, interp_weight, block)
    if ph or pw:  # padded once, densely: the gather then needs no bounds checks
        x = bb.emit(relax.op.nn.pad(x, [0, 0, 0, 0, ph, ph, pw, pw]))
    flat = bb.emit(relax.op.memory.view(x, (g.batch, g.in_channels, hp * wp)))
    # Where each kept window starts in the flat padded map; constant-folded when the table is.
    starts = bb.emit_te(lambda kept: window_starts(kept, g), kept_index, primfunc_name_hint="perforated_window_starts")
    if block:  # packed from the weights alone: moved to compile time (build.pack_weights)
        packed = bb.emit_te(lambda w: pack_filters(w, g, block), weight, primfunc_name_hint="perforated_pack_filters")
        columns = blocked_columns(g.batch * g.kept, accumulator_registers(target))
        compact = bb.emit_te(lambda w, x, s, b: implicit_gemm(w, x, s, b, g, columns), packed, flat, starts, bias,
                             primfunc_name_hint="perforated_gemm")  # fmt: skip
        return _emit_interpolation(bb, g, compact, interp_index, interp_weight)
    cols = _emit_int32_kernel(bb, "perforated_im2col", lambda x, s: im2col(x, s, g), [flat, starts])
    if kind == "cuda" and g.batch * g.kept >= MATMUL_COLUMNS:
        # dlight's GPU matmul rule schedules a plain matmul; with fewer columns its tiles stage
        # more than a block's shared memory, and the reduction rules serve the TE form instead.
        filters = bb.emit(relax.op.memory.view(weight, (g.groups, g.out_channels // g.groups, g.reduction)))
        # Bias shaped like the GEMM's output, so that FuseOps makes it the GEMM's epilogue.
        per_channel = bb.emit(relax.op.memory.view(bias, (g.groups, g.out_channels // g.groups, 1)))
        compact = bb.emit(relax.op.add(relax.op.matmul(filters, cols), per_channel))  # (groups, C_out/groups, N*K)
    else:  # the weights read in place, so a tuned CPU kernel may take them packed (build.pack_weights)
        compact = bb.emit_te(lambda w, c, b: gemm(w, c, b, g), weight, cols, bias, primfunc_name_hint="perforated_gemm")
    return _emit_interpolation(bb, g, compact, interp_index, interp_weight)


def _emit_blocked(bb, g: PerforatedGeometry, target, x, weight, bias, kept_index, interp_index, interp_weight,
                  block: int):  # fmt: skip
    """Emit the CPU steps in the channel-blocked layout (NCHW{b}c) of the dense convs: the input
    blocked and padded (one copy, as the padding alone was), its windows read in place with the
    input channels' block innermost, so that a window row of a block is one contiguous run
    rather than one short run a channel, and the output interpolated into blocks, then unblocked
    (the elementwise ops after it fuse with both). Return the (N, C_out, H', W') output."""
    (ph, pw), (hp, wp) = g.padding, g.padded_hw
    x = bb.emit(relax.op.layout_transform(x, index_map=lambda n, c, h, w: (n, c // block, h, w, c % block)))
    if ph or pw:
        x = bb.emit(relax.op.nn.pad(x, [0, 0, 0, 0, ph, ph, pw, pw, 0, 0]))
    flat = bb.emit(relax.op.memory.view(x, (g.batch, g.in_channels // block, hp * wp, block)))
    starts = bb.emit_te(lambda kept: window_starts(kept, g), kept_index, primfunc_name_hint="perforated_window_starts")
    packed = bb.emit_te(
        lambda w: pack_filters_blocked(w, g, block), weight, primfunc_name_hint="perforated_pack_filters"
    )
    columns = blocked_columns(g.batch * g.kept, accumulator_registers(target))
    compact = bb.emit_te(lambda w, x, s, b: implicit_gemm_blocked(w, x, s, b, g, columns), packed, flat, starts, bias,
                         primfunc_name_hint="perforated_gemm")  # fmt: skip
    out = _emit_interpolation(bb, g, compact, interp_index, interp_weight, interpolate_blocked)
    return bb.emit(relax.op.layout_transform(out, index_map=lambda n, c, h, w, i: (n, c * block + i, h, w)))


def _emit_interpolation(bb, g: PerforatedGeometry, compact, interp_index, interp_weight, compute=None):
    """Emit step 4 with ``compute`` (``interpolate``, or ``interpolate_blocked``); return its output."""
    compute = compute or interpolate
    # An int32 copy of the interpolation table (folded at compile time): int32 clamps vectorise.
    index = bb.emit_te(
        lambda index: te.compute(index.shape, lambda p, j: _clamp_index(index[p, j], g.kept), name="index32"),
        interp_index, primfunc_name_hint="perforated_index32",
    )  # fmt: skip
    out = bb.emit_te(
        lambda compact, index, weight: compute(compact, index, weight, g),
        compact, index, interp_weight, primfunc_name_hint="perforated_interpolate",
    )  # fmt: skip
    _mark_injective(bb, out)
    return out


def _emit_int32_kernel(bb, name: str, compute, args):
    """``bb.emit_te`` with int32 sizes and loop variables instead of Relax's int64: index
    arithmetic in int32 vectorises on AVX2, int64 min/max does not (the gather runs 2x faster).
    Such a kernel cannot fuse with int64 ones: only for opaque kernels."""
    inputs = [te.placeholder([int(d) for d in arg.ty.shape], arg.ty.dtype, f"in{i}") for i, arg in enumerate(args)]
    out = compute(*inputs)
    gvar = bb.add_func(te.create_prim_func([*inputs, out]).without_attr("global_symbol"), name)
    return bb.emit(relax.call_tir(gvar, args, relax.TensorType([int(d) for d in out.shape], out.dtype)))


def _mark_injective(bb, var) -> None:
    """Declare the kernel computing ``var`` injective. Its table lookups make TVM's pattern
    analysis call it opaque, and nothing fuses with an opaque kernel; injective, it takes in the
    elementwise ops that follow (batch norm, ReLU) as a dense conv does."""
    gvar = bb.lookup_binding(var).args[0]
    bb.update_func(gvar, bb.get()[gvar].with_attr("op_pattern", INJECTIVE))


def _clamp_index(value, upper: int):
    """A table entry as an int32 index in [0, upper): safe on any table contents."""
    return tirx.max(tirx.min(value, upper - 1), 0).astype("int32")


def window_starts(kept_index: te.Tensor, g: PerforatedGeometry) -> te.Tensor:
    """(K,) int32: the flat offset in the padded input map of each kept position's window."""
    out_w, wp = g.out_hw[1], g.padded_hw[1]

    def value(k):
        position = _clamp_index(kept_index[k], g.positions)
        return position // out_w * g.stride[0] * wp + position % out_w * g.stride[1]

    return te.compute((g.kept,), value, name="window_starts")


def im2col(flat: te.Tensor, starts: te.Tensor, g: PerforatedGeometry) -> te.Tensor:
    """(groups, C_in/groups*kh*kw, N*K) from the flat padded input (N, C_in, Hp*Wp): column
    ``n*K + k`` holds image n's window under the k-th kept output position; rows run over
    (channel, ky, kx) as the weights do."""
    (kh, kw), (hp, wp) = g.kernel, g.padded_hw
    per_group = g.in_channels // g.groups
    last = hp * wp - 1

    def value(group, row, column):
        tap = row // kw % kh * g.dilation[0] * wp + row % kw * g.dilation[1]
        # Real tables are in bounds; the clamp keeps random ones (MetaSchedule's runner) there too.
        offset = tirx.min(tirx.max(starts[column % g.kept] + tap, 0), last)
        return flat[column // g.kept, group * per_group + row // (kh * kw), offset]

    return te.compute((g.groups, g.reduction, g.batch * g.kept), value, name="im2col")


def gemm(weight: te.Tensor, cols: te.Tensor, bias: te.Tensor, g: PerforatedGeometry) -> te.Tensor:
    """(groups, C_out/groups, N*K): each group's filters times its columns, plus the bias. The
    reduction runs over (channel, ky, kx) so that the 4-D weight is read with affine indices:
    MetaSchedule can then rewrite its layout (pack it) for the schedule it picks."""
    (kh, kw), per_in, per_out = g.kernel, g.in_channels // g.groups, g.out_channels // g.groups
    c, ky, kx = te.reduce_axis((0, per_in), "c"), te.reduce_axis((0, kh), "ky"), te.reduce_axis((0, kw), "kx")
    acc = te.compute(
        (g.groups, per_out, g.batch * g.kept),
        lambda grp, o, col: te.sum(weight[grp * per_out + o, c, ky, kx] * cols[grp, (c * kh + ky) * kw + kx, col],
                                   axis=[c, ky, kx]),
        name="gemm",
    )  # fmt: skip
    return te.compute(acc.shape, lambda grp, o, col: acc[grp, o, col] + bias[grp * per_out + o], name="gemm_bias")


def pack_filters(weight: te.Tensor, g: PerforatedGeometry, block: int) -> te.Tensor:
    """(groups, C_out/groups/b, C_in/groups*kh*kw, b): each group's filters as the rows of its
    GEMM, ``b`` output channels interleaved so that one reduction step loads them as one vector."""
    (kh, kw), per_out = g.kernel, g.out_channels // g.groups
    return te.compute(
        (g.groups, per_out // block, g.reduction, block),
        lambda grp, chunk, row, lane: weight[grp * per_out + chunk * block + lane, row // (kh * kw), row // kw % kh,
                                             row % kw],
        name="packed_filters",
    )  # fmt: skip


def implicit_gemm(packed: te.Tensor, flat: te.Tensor, starts: te.Tensor, bias: te.Tensor, g: PerforatedGeometry,
                  columns: int) -> te.Tensor:  # fmt: skip
    """(groups, C_out/groups/b, columns, b): the packed filters times each kept position's window,
    read in place from the flat padded input (N, C_in, Hp*Wp) at its start (no im2col copy), plus
    the bias. Columns past N*K repeat the last one. Each start is clamped so that its whole
    window lies in the map: random tables (MetaSchedule's runner) read in bounds too."""
    groups, chunks, _, block = (int(d) for d in packed.shape)
    (kh, kw), (hp, wp), (dh, dw) = g.kernel, g.padded_hw, g.dilation
    per_in, per_out, count = g.in_channels // g.groups, chunks * block, g.batch * g.kept
    last_start = hp * wp - 1 - (kh - 1) * dh * wp - (kw - 1) * dw
    c, ky, kx = te.reduce_axis((0, per_in), "c"), te.reduce_axis((0, kh), "ky"), te.reduce_axis((0, kw), "kx")

    def value(grp, chunk, col, lane):
        column = tirx.min(col, count - 1) if columns > count else col
        start = tirx.min(tirx.max(starts[column % g.kept], 0), last_start).astype("int64")
        window = flat[column // g.kept, grp * per_in + c, start + ky * dh * wp + kx * dw]
        return te.sum(packed[grp, chunk, (c * kh + ky) * kw + kx, lane] * window, axis=[c, ky, kx])

    acc = te.compute((groups, chunks, columns, block), value, name="gemm")
    return te.compute(
        acc.shape, lambda grp, chunk, col, lane: acc[grp, chunk, col, lane] + bias[grp * per_out + chunk * block + lane],
        name="gemm_bias",
    )  # fmt: skip


def pack_filters_blocked(weight: te.Tensor, g: PerforatedGeometry, block: int) -> te.Tensor:
    """(groups, C_out/groups/b, C_in/groups*kh*kw, b) as ``pack_filters``, the rows in the order
    ``implicit_gemm_blocked`` reduces: (input channel block, ky, kx, channel within the block)."""
    (kh, kw), per_out = g.kernel, g.out_channels // g.groups

    def value(grp, chunk, row, lane):
        channel = row // (kh * kw * block) * block + row % block
        tap = row // block % (kh * kw)
        return weight[grp * per_out + chunk * block + lane, channel, tap // kw, tap % kw]

    return te.compute((g.groups, per_out // block, g.reduction, block), value, name="packed_filters")


def implicit_gemm_blocked(packed: te.Tensor, flat: te.Tensor, starts: te.Tensor, bias: te.Tensor,
                          g: PerforatedGeometry, columns: int) -> te.Tensor:  # fmt: skip
    """``implicit_gemm`` on a blocked flat padded input (N, C_in/b, Hp*Wp, b): the reduction
    runs over (input channel block, ky, kx, channel within the block), so that consecutive steps
    read consecutive floats of one window row, and ``packed`` is ``pack_filters_blocked``'s."""
    groups, chunks, _, block = (int(d) for d in packed.shape)
    (kh, kw), (hp, wp), (dh, dw) = g.kernel, g.padded_hw, g.dilation
    per_in_blocks, per_out, count = g.in_channels // g.groups // block, chunks * block, g.batch * g.kept
    last_start = hp * wp - 1 - (kh - 1) * dh * wp - (kw - 1) * dw
    cb, ky = te.reduce_axis((0, per_in_blocks), "cb"), te.reduce_axis((0, kh), "ky")
    kx, ci = te.reduce_axis((0, kw), "kx"), te.reduce_axis((0, block), "ci")

    def value(grp, chunk, col, lane):
        column = tirx.min(col, count - 1) if columns > count else col
        start = tirx.min(tirx.max(starts[column % g.kept], 0), last_start).astype("int64")
        window = flat[column // g.kept, grp * per_in_blocks + cb, start + ky * dh * wp + kx * dw, ci]
        row = ((cb * kh + ky) * kw + kx) * block + ci
        return te.sum(packed[grp, chunk, row, lane] * window, axis=[cb, ky, kx, ci])

    acc = te.compute((groups, chunks, columns, block), value, name="gemm")
    return te.compute(
        acc.shape, lambda grp, chunk, col, lane: acc[grp, chunk, col, lane] + bias[grp * per_out + chunk * block + lane],
        name="gemm_bias",
    )  # fmt: skip


def interpolate_blocked(compact: te.Tensor, index: te.Tensor, weight: te.Tensor, g: PerforatedGeometry) -> te.Tensor:
    """(N, C_out/b, H', W', b) from the blocked compact values (``implicit_gemm_blocked``) through
    the (P, J) table: each output position's block of channels is one vector of a compact column."""
    _, chunks, _, block = (int(d) for d in compact.shape)
    out_w, columns = g.out_hw[1], int(index.shape[1])

    def value(n, c, y, xx, lane):
        p = y * out_w + xx
        terms = [compact[c // chunks, c % chunks, n * g.kept + _clamp_index(index[p, j], g.kept), lane] * weight[p, j]
                 for j in range(columns)]  # fmt: skip
        return sum(terms[1:], terms[0])

    return te.compute((g.batch, g.out_channels // block, *g.out_hw, block), value, name="interpolate")


def interpolate(compact: te.Tensor, index: te.Tensor, weight: te.Tensor, g: PerforatedGeometry) -> te.Tensor:
    """(N, C_out, H', W') from the compact values through the (P, J) table; compact is
    (groups, C_out/groups, N*K), or blocked as ``implicit_gemm`` writes it."""
    out_w = g.out_hw[1]
    per_group = g.out_channels // g.groups
    columns = int(index.shape[1])
    block = int(compact.shape[3]) if len(compact.shape) == 4 else None

    def read(channel, column):
        group, c = channel // per_group, channel % per_group
        return compact[group, c // block, column, c % block] if block else compact[group, c, column]

    def value(n, c, y, xx):
        p = y * out_w + xx
        terms = [read(c, n * g.kept + _clamp_index(index[p, j], g.kept)) * weight[p, j] for j in range(columns)]
        return sum(terms[1:], terms[0])

    return te.compute((g.batch, g.out_channels, *g.out_hw), value, name="interpolate")
