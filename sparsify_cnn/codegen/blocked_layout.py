"""Channel-blocked activations (NCHW[x]c) for CPU convolutions, planned across the graph, and
packed weights for linear layers.

A conv whose output channels split into blocks of one SIMD register computes each output
position's block as one vector: the input value is broadcast, the weights of the block are one
contiguous load. ``block_channels`` asks Relax's ``ConvertLayout`` for that layout at every conv
that can take it; the layout then flows through the elementwise ops, pooling and residual adds
after it, so activations are transposed once where the graph enters and leaves the blocked
region, not per layer. The weights are re-laid out once, at compile time (``pack_weights``).
TOPI legalizes no blocked conv: ``legalize_blocked_conv`` gives the compute, dense (TOPI's
``conv2d_NCHWc``) and depthwise, for ``cpu_schedules.BlockedConv2D`` to schedule.

Which layout a conv gets:

- dense (groups 1), output channels a multiple of the block: input ``NCHW{b}c`` (or, for a first
  layer with fewer input channels than a block, all of them as one block: ``NCHW3c``), weights
  ``OIHW{i}i{b}o``, output ``NCHW{b}c``;
- depthwise, channels a multiple of the block: ``NCHW{b}c``, weights ``OIHW1i{b}o``;
- grouped, each group's input and output channels whole blocks: ``NCHW{b}c``, weights
  ``OIHW{b}i{b}o`` (TOPI's blocked conv computes groups); groups narrower than a block are
  first merged into whole blocks (``merge_narrow_groups``: SSC's k x k branch);
- anything else (odd channel counts): NCHW as imported.

ReLU6 is rewritten first so that the layout flows through it (``clip_as_min_max``); SSC's
channel shuffle before a blocked conv is read by the conv in place (``shuffle_in_blocks``);
linear layers take their weights in column blocks (``pack_dense_weights``)."""

from __future__ import annotations

from .lowering.dots import SIMD

CONV2D = "relax.nn.conv2d"
OUT_ELEMWISE_FUSABLE = 4  # TVM's OpPatternKind kOutEWiseFusable: a conv, its epilogue fused in


def conv_layouts(in_channels: int, out_channels: int, groups: int, block: int = SIMD) -> list[str] | None:
    """[data, kernel, output] layouts for one conv, or None to leave it in NCHW."""
    if out_channels % block:
        return None
    if groups == 1:
        if in_channels % block == 0:
            inner = block
        elif in_channels < block:
            inner = in_channels  # a first layer: its few channels are one block
        else:
            return None
        return [f"NCHW{inner}c", f"OIHW{inner}i{block}o", f"NCHW{block}c"]
    if groups == in_channels == out_channels:
        return [f"NCHW{block}c", f"OIHW1i{block}o", f"NCHW{block}c"]
    if (in_channels // groups) % block == 0 and (out_channels // groups) % block == 0:
        return [f"NCHW{block}c", f"OIHW{block}i{block}o", f"NCHW{block}c"]  # whole blocks a group
    return None


def _desired(call) -> dict:
    """``ConvertLayout``'s callback: the layouts ``conv_layouts`` gives a conv, NCHW otherwise."""
    if call.op.name != CONV2D:
        return {}
    attrs = call.attrs
    data, weight = (arg.ty.shape for arg in call.args)
    plain = attrs.data_layout == "NCHW" and attrs.kernel_layout == "OIHW" and attrs.out_layout == "NCHW"
    layouts = None
    if plain and data is not None and weight is not None:
        try:
            layouts = conv_layouts(int(data[1]), int(weight[0]), int(attrs.groups))
        except TypeError:  # a symbolic channel count
            pass
    return {CONV2D: layouts or ["NCHW", "OIHW"]}


def to_blocked_layout(mod):
    """``mod`` with its convs in channel-blocked layouts where they take one (``block_channels``),
    its linear layers' weights packed (``pack_dense_weights``), and legalized: the blocked convs
    by ``legalize_blocked_conv``, every other op as TVM does it. Call within the target's scope."""
    from tvm import relax

    mod = pack_dense_weights()(block_channels()(mod))
    return relax.transform.LegalizeOps({CONV2D: legalize_blocked_conv})(mod)


def block_channels():
    """The Relax pass that gives every conv that can take it a channel-blocked layout."""
    import tvm
    from tvm import relax

    return tvm.transform.Sequential([
        clip_as_min_max(), positive_squeeze_axes(), merge_narrow_groups(), relax.transform.ConvertLayout({}, _desired),
        shuffle_in_blocks(),
        relax.transform.DeadCodeElimination(),
    ])  # fmt: skip


def _function_pass(name: str, make_mutator, main_only: bool = False):
    """A module pass running the PyExprMutator ``make_mutator(mod, func)`` makes over every Relax
    function (with ``main_only``, those with weights, ``num_input``)."""
    import tvm
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name=name)
    def rewrite(mod, _context):
        for var, func in list(mod.functions.items()):
            if isinstance(func, relax.Function) and (not main_only or (func.attrs and "num_input" in func.attrs)):
                mutator = make_mutator(mod, func)
                mutator.builder_.update_func(var, mutator.visit_expr(func))
                mod = mutator.builder_.get()  # with the kernels the mutator added
        return mod

    return rewrite


def merge_narrow_groups(block: int = SIMD):
    """A grouped conv with fewer input channels a group than a block (SSC's k x k branch on 64
    channels in 16 groups: 4 a group) as one with groups of a whole block, the weights widened
    with zeros outside each original group (block diagonal), so that it takes the blocked layout
    instead of leaving it twice. The multiply-adds grow ``block / (C_in / groups)`` times on a
    kernel several times faster; the widening depends on the weights alone (compile time)."""
    import tvm
    from tvm import relax, te, tirx
    from tvm.relax.expr_functor import PyExprMutator, mutator

    conv2d = tvm.ir.Op.get(CONV2D)

    @mutator
    class MergeNarrowGroups(PyExprMutator):
        def __init__(self, mod, weights):
            super().__init__(mod)
            self.weights = weights

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if not call.op.same_as(conv2d) or call.args[1] not in self.weights:
                return call
            attrs, (data, weight) = call.attrs, call.args
            if not (attrs.data_layout == "NCHW" and attrs.kernel_layout == "OIHW" and attrs.out_layout == "NCHW"):
                return call
            try:
                in_channels, out_channels, groups = int(data.ty.shape[1]), int(weight.ty.shape[0]), int(attrs.groups)
            except TypeError:  # symbolic
                return call
            per_in, per_out = in_channels // groups, out_channels // groups
            if groups == 1 or groups == in_channels or per_in >= block or block % per_in:
                return call
            merged = block // per_in
            if groups % merged or (merged * per_out) % block:
                return call
            wide = self.builder_.call_te(
                lambda w: _widened(w, merged, per_in, per_out), weight, primfunc_name_hint="widened_weight"
            )
            return relax.op.nn.conv2d(
                data, wide, attrs.strides, attrs.padding, attrs.dilation, groups // merged, "NCHW", "OIHW", "NCHW",
                attrs.out_dtype,
            )  # fmt: skip

    def _widened(weight, merged: int, per_in: int, per_out: int):
        out_channels, _, kh, kw = (int(d) for d in weight.shape)
        return te.compute(
            (out_channels, merged * per_in, kh, kw),
            lambda o, i, y, x: tirx.if_then_else(
                i // per_in == o // per_out % merged, weight[o, i % per_in, y, x], tirx.const(0, weight.dtype)
            ),
            name="widened_weight",
        )

    return _function_pass(
        "MergeNarrowGroups", lambda mod, func: MergeNarrowGroups(mod, _weight_vars(func)), main_only=True
    )


def shuffle_in_blocks():
    """SSC's channel shuffle (reshape, transpose, reshape: channel ``a*p + j`` moves to
    ``j*(C/p) + a``) before a blocked conv, which ``ConvertLayout`` leaves in NCHW (two layout
    changes and the shuffle: three copies), read by the conv from the blocked input instead: one
    kernel, the conv's (``shuffled_conv2d_nchwc``), no copy. Each input value is a broadcast
    scalar in the conv's microkernel, so reading it from a shuffled address costs nothing."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    layout_transform, conv2d = tvm.ir.Op.get("relax.layout_transform"), tvm.ir.Op.get(CONV2D)
    reshape, permute = tvm.ir.Op.get("relax.reshape"), tvm.ir.Op.get("relax.permute_dims")

    @mutator
    class ShuffleInBlocks(PyExprMutator):
        def producer(self, expr, op):
            """The call binding ``expr`` when it is a call of ``op``, else None."""
            if not isinstance(expr, relax.Var):
                return None
            value = self.lookup_binding(expr)
            return value if isinstance(value, relax.Call) and value.op.same_as(op) else None

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if not call.op.same_as(conv2d) or call.attrs.data_layout == "NCHW":
                return call
            found = self.channel_shuffle(call.args[0])
            if found is None:
                return call
            source, groups = found
            attrs = call.attrs
            out = self.builder_.call_te(
                shuffled_conv2d_nchwc, source, call.args[1], groups, list(attrs.strides), list(attrs.padding),
                list(attrs.dilation), attrs.data_layout, attrs.out_layout, call.ty.dtype,
                primfunc_name_hint="shuffled_conv2d_NCHWc",
            )  # fmt: skip
            gvar = out.args[0]  # a conv: the elementwise ops after it fuse in
            self.builder_.update_func(gvar, self.builder_.get()[gvar].with_attr("op_pattern", OUT_ELEMWISE_FUSABLE))
            return out

        def channel_shuffle(self, data):
            """(blocked source, groups p) when ``data`` is a blocked tensor unblocked, shuffled
            and blocked again with the same block, else None."""
            blocking = self.producer(data, layout_transform)
            if blocking is None:
                return None
            chain, expr = [], blocking.args[0]
            for op in (reshape, permute, reshape, layout_transform):
                producer = self.producer(expr, op)
                if producer is None:
                    return None
                chain.append(producer)
                expr = producer.args[0]
            flat, swapped, split, unblocked = chain
            source = unblocked.args[0]
            shapes = [tuple(int(d) for d in e.ty.shape) for e in (source, split.args[0], split, flat, blocking)]
            (n, chunks, h, w, block), plain, grouped, restored, out = shapes
            channels = chunks * block
            if plain != (n, channels, h, w) or restored != plain or out != shapes[0] or len(grouped) != 5:
                return None
            per_group, groups = grouped[1], grouped[2]
            if grouped != (n, per_group, groups, h, w) or [int(a) for a in swapped.attrs.axes] != [0, 2, 1, 3, 4]:
                return None
            if not (_is_unblocking(unblocked.attrs.index_map, block) and _is_blocking(blocking.attrs.index_map, block)):
                return None
            return source, groups

    return _function_pass("ShuffleInBlocks", lambda mod, func: ShuffleInBlocks(mod))


def shuffled_conv2d_nchwc(data, kernel, groups: int, strides, padding, dilation, layout, out_layout, out_dtype):
    """TOPI's blocked conv on ``data`` [N, C/b, H, W, b] channel-shuffled (channel ``a*p + j``
    read as ``j*(C/p) + a``, p = ``groups``)."""
    from tvm import te, topi

    batch, chunks, height, width, block = data.shape
    per_group = int(chunks) * int(block) // groups

    def value(n, chunk, h, w, lane):
        s = chunk * int(block) + lane
        c = s % per_group * groups + s // per_group
        return data[n, c // int(block), h, w, c % int(block)]

    shuffled = te.compute(data.shape, value, name="channel_shuffle")
    return topi.nn.conv2d_NCHWc(shuffled, kernel, strides, padding, dilation, layout, out_layout, out_dtype)


def _is_unblocking(index_map, block: int) -> bool:
    """``index_map`` takes NCHW{block}c to NCHW (checked at a point)."""
    return _at(index_map, (1, 2, 3, 4, 5)) == [1, 2 * block + 5, 3, 4]


def _is_blocking(index_map, block: int) -> bool:
    """``index_map`` takes NCHW to NCHW{block}c (checked at a point)."""
    channel = 3 * block + block - 1
    return _at(index_map, (1, channel, 3, 4)) == [1, 3, 3, 4, block - 1]


def _at(index_map, point) -> list[int] | None:
    from tvm import tirx
    from tvm.sym.analyzer import Analyzer

    if len(index_map.initial_indices) != len(point):
        return None
    analyzer = Analyzer()
    try:
        return [int(analyzer.simplify(e)) for e in index_map.map_indices([tirx.const(v, "int64") for v in point])]
    except (TypeError, ValueError):
        return None


def clip_as_min_max():
    """``clip(x, lo, hi)`` (ReLU6, hardtanh) as ``minimum(maximum(x, lo), hi)``: Relax infers no
    layout for ``clip``, so a clip would leave the blocked layout twice per layer; maximum and
    minimum follow the layout of ``x`` and fuse into the conv before them."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    clip = tvm.ir.Op.get("relax.clip")

    @mutator
    class ClipAsMinMax(PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if not call.op.same_as(clip):
                return call
            x, low, high = call.args
            dtype = call.ty.dtype
            return relax.op.minimum(relax.op.maximum(x, relax.const(low.value, dtype)), relax.const(high.value, dtype))

    return _function_pass("ClipAsMinMax", lambda mod, func: ClipAsMinMax(mod))


def positive_squeeze_axes():
    """``squeeze`` with its axes counted from the front: TVM 0.27's ConvertLayout fails with
    ``std::bad_alloc`` on a negative squeeze axis (attention as ``nn.MultiheadAttention``
    exports it squeezes ``axis=[-2]``), whatever the layouts."""
    import tvm
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    squeeze = tvm.ir.Op.get("relax.squeeze")

    @mutator
    class PositiveSqueezeAxes(PyExprMutator):
        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            axes = call.attrs.axis if call.op.same_as(squeeze) else None
            if axes is None or all(int(a) >= 0 for a in axes):
                return call
            rank = len(call.args[0].ty.shape)
            return relax.op.squeeze(call.args[0], [int(a) % rank for a in axes])

    return _function_pass("PositiveSqueezeAxes", lambda mod, func: PositiveSqueezeAxes(mod))


def legalize_blocked_conv(bb, call):
    """``relax.nn.conv2d`` in a blocked layout as a TE compute; any other layout as TVM does it."""
    from tvm import topi
    from tvm.relax.transform.legalize_ops.nn import _nn_conv2d

    attrs = call.attrs
    if attrs.data_layout == "NCHW" or len(attrs.data_layout) == 4:
        return _nn_conv2d(bb, call)
    out_dtype = attrs.out_dtype if attrs.out_dtype != "" else call.ty.dtype
    if int(attrs.groups) == 1 or int(call.args[1].ty.shape[4]) > 1:  # TOPI's compute takes groups of whole blocks
        return bb.call_te(
            topi.nn.conv2d_NCHWc, call.args[0], call.args[1], list(attrs.strides), list(attrs.padding),
            list(attrs.dilation), attrs.data_layout, attrs.out_layout, out_dtype, primfunc_name_hint="conv2d_NCHWc",
        )  # fmt: skip
    return bb.call_te(
        depthwise_conv2d_nchwc, call.args[0], call.args[1], list(attrs.strides), list(attrs.padding),
        list(attrs.dilation), out_dtype, primfunc_name_hint="depthwise_conv2d_NCHWc",
    )  # fmt: skip


def depthwise_conv2d_nchwc(data, kernel, strides, padding, dilation, out_dtype):
    """Depthwise conv on ``[N, C/b, H, W, b]`` with weights ``[C/b, 1, KH, KW, 1, b]``."""
    from tvm import te, topi

    batch = data.shape[0]  # may be symbolic
    chunks, height, width, block = (int(d) for d in data.shape[1:])
    _, _, kernel_h, kernel_w, _, _ = (int(d) for d in kernel.shape)
    stride_h, stride_w = (int(s) for s in strides)
    dilation_h, dilation_w = (int(d) for d in dilation)
    top, left, bottom, right = (int(p) for p in padding)
    out_h = (height + top + bottom - (kernel_h - 1) * dilation_h - 1) // stride_h + 1
    out_w = (width + left + right - (kernel_w - 1) * dilation_w - 1) // stride_w + 1
    padded = topi.nn.pad(data, [0, 0, top, left, 0], [0, 0, bottom, right, 0], name="data_pad") if any(padding) else data
    kh = te.reduce_axis((0, kernel_h), name="kh")
    kw = te.reduce_axis((0, kernel_w), name="kw")
    return te.compute(
        (batch, chunks, out_h, out_w, block),
        lambda n, c, h, w, b: te.sum(
            padded[n, c, h * stride_h + kh * dilation_h, w * stride_w + kw * dilation_w, b].astype(out_dtype)
            * kernel[c, 0, kh, kw, 0, b].astype(out_dtype),
            axis=[kh, kw],
        ),
        name="depthwise_conv2d_NCHWc",
    )


def pack_dense_weights():
    """A linear layer ``x @ w`` (``w`` of shape [K, N], from the weights alone) with ``w`` packed
    as [N / b, K, b], ``b`` the columns its kernel computes together (``matmul_lanes``): each
    block of columns then reads its weights as one contiguous run, not one row segment per page
    (what made VGG's 25088 x 4096 classifier slower than eager's). The packing depends on
    the weights alone: it runs once, at compile time."""
    import tvm
    from tvm import relax, te
    from tvm.relax.expr_functor import PyExprMutator, mutator

    from .cpu_schedules import matmul_lanes

    matmul = tvm.ir.Op.get("relax.matmul")

    def dense_packed(x, packed):
        rows, depth = x.shape
        blocks, _, lanes = packed.shape
        k = te.reduce_axis((0, depth), name="k")
        return te.compute(
            (rows, blocks * lanes),
            lambda i, j: te.sum(x[i, k] * packed[j // lanes, k, j % lanes], axis=k),
            name="dense_packed",
        )

    @mutator
    class PackDenseWeights(PyExprMutator):
        def __init__(self, mod, weights):
            super().__init__(mod)
            self.weights = weights

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if not call.op.same_as(matmul) or call.args[1] not in self.weights:
                return call
            x, w = call.args
            if len(x.ty.shape) != 2 or len(w.ty.shape) != 2 or not x.ty.dtype == w.ty.dtype == call.ty.dtype:
                return call
            width = int(w.ty.shape[1])
            lanes = matmul_lanes(width)
            if width % lanes:
                return call
            packed = self.builder_.emit(relax.op.layout_transform(w, index_map=lambda k, n: (n // lanes, k, n % lanes)))
            return self.builder_.call_te(dense_packed, x, packed, primfunc_name_hint="dense_packed")

    return _function_pass(
        "PackDenseWeights", lambda mod, func: PackDenseWeights(mod, _weight_vars(func)), main_only=True
    )


def _weight_vars(func) -> set:
    """The variables of ``func`` computed from its weights alone (the parameters after
    ``num_input``), the weights included."""
    from tvm import relax

    known = set(func.params[int(func.attrs["num_input"]) :])
    for block in func.body.blocks:
        for binding in block.bindings:
            used = relax.analysis.free_vars(binding.value)
            if used and all(v in known for v in used):
                known.add(binding.var)
    return known

