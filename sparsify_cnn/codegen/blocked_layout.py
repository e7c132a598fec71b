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
- anything else (other grouped convs, odd channel counts): NCHW as imported.

ReLU6 is rewritten first so that the layout flows through it (``clip_as_min_max``); linear
layers take their weights in column blocks (``pack_dense_weights``)."""

from __future__ import annotations

from .lowering.dots import SIMD

CONV2D = "relax.nn.conv2d"


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

    return tvm.transform.Sequential([clip_as_min_max(), relax.transform.ConvertLayout({}, _desired)])


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

    @tvm.transform.module_pass(opt_level=0, name="ClipAsMinMax")
    def rewrite(mod, _context):
        for var, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                rewriter = ClipAsMinMax(mod)
                rewriter.builder_.update_func(var, rewriter.visit_expr(func))
                mod = rewriter.builder_.get()
        return mod

    return rewrite


def legalize_blocked_conv(bb, call):
    """``relax.nn.conv2d`` in a blocked layout as a TE compute; any other layout as TVM does it."""
    from tvm import topi
    from tvm.relax.transform.legalize_ops.nn import _nn_conv2d

    attrs = call.attrs
    if attrs.data_layout == "NCHW" or len(attrs.data_layout) == 4:
        return _nn_conv2d(bb, call)
    out_dtype = attrs.out_dtype if attrs.out_dtype != "" else call.ty.dtype
    if int(attrs.groups) == 1:
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

    @tvm.transform.module_pass(opt_level=0, name="PackDenseWeights")
    def rewrite(mod, _context):
        for var, func in list(mod.functions.items()):
            if isinstance(func, relax.Function) and func.attrs and "num_input" in func.attrs:
                packer = PackDenseWeights(mod, _weight_vars(func))
                packer.builder_.update_func(var, packer.visit_expr(func))
                mod = packer.builder_.get()  # with the kernels call_te added
        return mod

    return rewrite


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

