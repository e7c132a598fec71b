"""Default CPU schedules, in the spirit of TVM's ``dlight`` (which has GPU rules, and on CPU only
GEMV and reductions): without them every convolution compiles to naive loops. Each rule takes
one fused PrimFunc and returns a schedule, or None when the function is not its kind; a rule that
fails leaves the function as it was (correct, slow), never a broken one. In the order tried:

- ``BlockedConv2D``: a conv in a channel-blocked layout (``blocked_layout``; dense, depthwise,
  first layer) with its padding and epilogue: register tiles of one or two channel blocks (a SIMD
  vector each) by a few output columns (``blocked_tile``), the weights of a block loaded as one
  vector, the input broadcast; rows and channel blocks in parallel;
- ``Conv2D``: a conv left in NCHW (grouped, odd channel counts; dense, depthwise, strided,
  dilated) with its padding stage and elementwise epilogue (bias, batch norm folded, ReLU,
  residual add): the output is computed in register tiles of a few output channels by a row of
  columns (``conv_tile``), accumulated in a local buffer over the whole reduction, rows and
  channel blocks in parallel; a strided conv's padded input is stored de-strided so that its
  columns load as vectors;
- ``Matmul``: a matrix product (a linear layer at any batch) with its epilogue: output columns
  vectorised by whole cache lines, accumulated in a local buffer, rows and column blocks parallel;
- ``BlockedMatmul``: a matrix product with channel-blocked output and packed weights (the
  perforated conv's implicit GEMM): the blocked conv's register tile;
- dlight's ``GEMV`` and ``Reduction`` (global pooling, softmax sums);
- ``Window``: any other single reduction after its spatial loops (max and average pooling): the
  reduction inside, the innermost output loop vectorised, the outer ones parallel;
- ``Elementwise``: functions of spatial blocks only: outer loops parallel, the innermost
  vectorised.

The build applies them to every CPU kernel not hand-written (the Spatial op's) or tuned. Tuning
searches from them: ``tunable_space`` is the register-tiled rules' schedules with their tile
sizes sampled."""

from __future__ import annotations

from .lowering.dots import SIMD

REGISTERS = 12  # SIMD registers a conv's accumulators may take (AVX2 has 16)
REGISTERS_AVX512 = 24  # AVX-512 has 32


def default_cpu_schedule():
    """The module pass that schedules every unscheduled PrimFunc it has a rule for."""
    from tvm.s_tir import dlight

    convs = (BlockedConv2D(), Conv2D())
    products = (Matmul(), BlockedMatmul(), dlight.cpu.GEMV())
    return dlight.ApplyDefaultSchedule(*convs, *products, dlight.cpu.Reduction(), Window(), Elementwise())


def tunable_space(target):
    """A MetaSchedule design space (a ``ScheduleFn`` function) from the register-tiled rules: a
    kernel one of them takes gets that rule's schedule with its tile sizes sampled, starting at
    the rule's own; other kernels get none here."""

    def space(sch):
        for rule in (BlockedConv2D(), Conv2D(), Matmul(), BlockedMatmul()):
            attempt = sch.copy()
            try:
                if rule.schedule(attempt, target, tunable=True):
                    return [attempt]
            except Exception:  # noqa: BLE001 - tvm's ScheduleError: not this rule's kernel
                continue
        return []

    return space


class _Rule:
    """A dlight schedule rule that never raises: a failed schedule means "not mine"."""

    def apply(self, func, target, tunable):
        from tvm import s_tir, tirx

        if not isinstance(func, tirx.PrimFunc):
            return None
        try:
            sch = s_tir.Schedule(func)
            return sch if self.schedule(sch, target, tunable) else None
        except Exception:  # noqa: BLE001 - tvm's ScheduleError and friends: leave the function as it is
            return None

    def schedule(self, sch, target, tunable: bool = False) -> bool:
        """Schedule ``sch`` in place; False when it is not this rule's kind. ``tunable``: the
        register tile's sizes are sampled (``_tile``), for MetaSchedule to search from."""
        raise NotImplementedError


def conv_tile(channels: int, columns: int) -> tuple[int, int]:
    """(columns, output channels) of a conv's register tile. Columns: one SIMD vector when the row
    is a multiple of it, else a whole row of at most 16, else the largest divisor of the row up
    to 16 (28 -> 14): LLVM pads such vectors, whereas a tile that does not divide the row needs a
    predicate, which makes the loop scalar. Output channels: as many as fit in ``REGISTERS``
    vector accumulators (at most 8), a divisor of the channel count."""
    if columns % SIMD == 0 or columns < SIMD:
        lanes = min(columns, SIMD)
    else:
        lanes = max([d for d in range(SIMD + 1, 2 * SIMD + 1) if columns % d == 0] or [SIMD])
    vectors = -(-lanes // SIMD)
    most = max(1, min(8, REGISTERS // vectors))
    block = max(d for d in range(1, most + 1) if channels % d == 0)
    return lanes, block


def _tile(sch, loop, inner: int, most: int, tunable: bool):
    """``loop`` split into (blocks, a tile of ``inner``). ``tunable``: the tile is a sampled
    divisor of at most ``most`` (a perfect tile MetaSchedule mutates), the rule's ``inner`` its
    first decision."""
    if not tunable:
        return sch.split(loop, [None, inner])
    extent = _extent(sch, loop)
    factors = sch.sample_perfect_tile(loop, n=2, max_innermost_factor=max(most, inner),
                                      decision=[extent // inner, inner])  # fmt: skip
    return sch.split(loop, factors)


def _extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def _blocks(sch):
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _iter_kinds(sch, block) -> str:
    """"S" or "R" per iteration variable of ``block`` (others: "O")."""
    from tvm.tirx import IterVar

    kinds = {IterVar.DataPar: "S", IterVar.CommReduce: "R"}
    return "".join(kinds.get(int(v.iter_type), "O") for v in sch.get(block).iter_vars)


def _parallel_vectorize(sch, block) -> None:
    """Outer loops fused and parallel, the innermost split by SIMD and vectorised."""
    loops = sch.get_loops(block)
    if len(loops) > 1:
        sch.parallel(sch.fuse(*loops[:-1]))
    inner = sch.get_loops(block)[-1]
    _, lanes = sch.split(inner, [None, SIMD])
    sch.vectorize(lanes)


class Conv2D(_Rule):
    def schedule(self, sch, target, tunable: bool = False) -> bool:
        found = _conv_block(sch)
        if found is None:
            return False
        before, conv, after = found
        kinds = _iter_kinds(sch, conv)
        if kinds[:4] != "SSSS" or set(kinds[4:]) != {"R"} or len(sch.get_loops(conv)) != len(kinds):
            return False
        _epilogue(sch, after)
        if len(before) == 1:
            _destride_columns(sch, before[0], conv)
        batch, channels, rows, columns, *reduce = sch.get_loops(conv)
        lanes, block = conv_tile(_extent(sch, channels), _extent(sch, columns))
        channel_blocks, channel = _tile(sch, channels, block, 8, tunable)
        column_blocks, column = sch.split(columns, [None, lanes])
        sch.reorder(batch, channel_blocks, rows, column_blocks, *reduce, channel, column)
        _register_tile(sch, conv, at=column_blocks, parallel=[batch, channel_blocks, rows], unrolled=[channel],
                       lanes=column, reduce=reduce[0], others=before, epilogue=_last(after))  # fmt: skip
        return True


def accumulator_registers(target) -> int:
    """Vector registers a register tile's accumulators may take on ``target``."""
    from tvm.target import codegen

    return REGISTERS_AVX512 if codegen.target_has_features("avx512f", target) else REGISTERS


def blocked_tile(chunks: int, columns: int, registers: int = REGISTERS) -> tuple[int, int]:
    """(channel blocks, output columns) of a blocked conv's register tile, one accumulator vector
    per pair, at most ``registers`` of them, each a divisor (a tile that does not divide the row
    needs a predicate in the innermost loop). Each reduction step loads one weight vector per
    channel block and broadcasts one input value per column: the tile chosen does the most
    multiply-adds per load, the larger on a tie. At most two channel blocks: their weights lie a
    whole filter apart."""
    options = [(c, w) for c in (1, 2) if chunks % c == 0 for w in range(1, registers // c + 1) if columns % w == 0]
    return max(options, key=lambda tile: (tile[0] * tile[1] / (tile[0] + tile[1]), tile[0] * tile[1]))


def blocked_columns(count: int, registers: int = REGISTERS) -> int:
    """``count`` columns of a blocked matrix product (``BlockedMatmul``) padded to a whole number
    of register tiles two channel blocks tall: the tile width from a quarter to half of the
    ``registers`` that wastes the fewest columns, the wider on a tie."""
    widths = range(max(1, registers // 4), registers // 2 + 1)
    return min((-(-count // w) * w, -w) for w in widths)[0]


class BlockedConv2D(_Rule):
    """A conv in channel-blocked layout (``blocked_layout``): output ``[N, C/b, H, W, b]``,
    reduction (input channels, kh, kw) or, depthwise, (kh, kw). A tile is one or two channel
    blocks by a few columns (``blocked_tile``), one accumulator vector each, accumulated over the
    whole reduction with the input channels' block innermost: each step broadcasts one input
    value per column and loads one contiguous vector of weights per channel block."""

    def schedule(self, sch, target, tunable: bool = False) -> bool:
        found = _conv_block(sch)
        if found is None:
            return False
        before, conv, after = found
        kinds = _iter_kinds(sch, conv)
        if kinds[:5] != "SSSSS" or set(kinds[5:]) != {"R"} or len(kinds) not in (7, 8):
            return False
        if len(sch.get_loops(conv)) != len(kinds):
            return False
        _epilogue(sch, after)
        batch, chunks, rows, columns, lanes, *reduce = sch.get_loops(conv)
        if len(reduce) == 3:  # input channels: blocks outside the window, the block inside it
            channels, kh, kw = reduce
            padding = [b for b in before if "pad" in sch.get(b).name_hint]
            for block in [b for b in before if b not in padding]:
                sch.compute_inline(block)  # how the input is read (a channel shuffle), not a copy
            before = padding
            inner = _input_block(sch, conv)
            if _extent(sch, channels) % inner:
                return False
            channel_blocks, channel = sch.split(channels, [None, inner])
            reduce_outer, reduce_inner = [channel_blocks, kh, kw], [channel]
        else:  # depthwise: memory-bound, so the padding is read in place, not copied first
            reduce_outer, reduce_inner = reduce, []
            for block in before:
                sch.compute_inline(block)
            before = []
        registers = accumulator_registers(target)
        chunk_tile, column_tile = blocked_tile(_extent(sch, chunks), _extent(sch, columns), registers)
        chunk_blocks, chunk = _tile(sch, chunks, chunk_tile, 2, tunable)
        column_blocks, column = _tile(sch, columns, column_tile, registers, tunable)
        sch.reorder(batch, chunk_blocks, rows, column_blocks, *reduce_outer, *reduce_inner, column, chunk, lanes)
        _register_tile(sch, conv, at=column_blocks, parallel=[batch, chunk_blocks, rows], unrolled=[column, chunk],
                       lanes=lanes, reduce=reduce_outer[0], others=before, epilogue=_last(after))  # fmt: skip
        return True


def _register_tile(sch, block, at, parallel, unrolled, lanes, reduce, others, epilogue=None) -> None:
    """What every register-tiled rule does once its loops are in order: accumulate ``block`` in a
    local tile written back after the reduction under loop ``at``, through the ``epilogue`` block
    (bias, batch norm, ReLU, residual add: inlined, so the output is written once); fuse the
    ``parallel`` loops, unroll the ``unrolled`` ones, vectorise ``lanes`` and the write-back;
    split off the initialisation at loop ``reduce``; and schedule the ``others`` blocks (padding;
    an epilogue that cannot be inlined) parallel and vectorised on their own."""
    tile = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(tile, at, preserve_unit_loops=True)  # as many loops whatever the tile (a replayed trace)
    write_back = sch.get_loops(tile)[-1]
    if epilogue is not None:
        try:
            sch.reverse_compute_inline(epilogue)
        except Exception:  # noqa: BLE001 - tvm's ScheduleError: the epilogue runs as a pass of its own
            others = [*others, epilogue]
    sch.parallel(sch.fuse(*parallel))
    for loop in unrolled:
        sch.unroll(loop)
    sch.vectorize(lanes)
    sch.vectorize(write_back)
    sch.decompose_reduction(block, reduce)
    for other in others:
        _parallel_vectorize(sch, other)


def _last(blocks):
    return blocks[-1] if blocks else None


def _conv_block(sch):
    """(blocks before, the conv block, blocks after) when the function is one conv with
    elementwise stages around it, else None."""
    found = _one_reduction(sch)
    if found is None or "conv2d" not in sch.get(found[1]).name_hint.lower():
        return None
    return found


def _input_block(sch, conv) -> int:
    """The input's channel block: the last dimension of the (padded) input the conv reads."""
    data = sch.get(conv).reads[0].source
    return int(data.shape[-1])


def _one_reduction(sch):
    """(blocks before, the one reduction block, blocks after), or None when there is not exactly one."""
    blocks = _blocks(sch)
    found = [i for i, b in enumerate(blocks) if "R" in _iter_kinds(sch, b)]
    if len(found) != 1:
        return None
    at = found[0]
    return blocks[:at], blocks[at], blocks[at + 1 :]


def _loop_nest(sch):
    """(blocks before, the one reduction block, blocks after, its spatial loops, its reduction
    loops) when its iteration variables are all spatial, then all reductions, one loop each;
    else None."""
    found = _one_reduction(sch)
    if found is None:
        return None
    before, block, after = found
    kinds = _iter_kinds(sch, block)
    spatial = len(kinds.rstrip("R"))
    loops = sch.get_loops(block)
    if spatial == len(kinds) or set(kinds[:spatial]) != {"S"} or len(loops) != len(kinds):
        return None
    return before, block, after, loops[:spatial], loops[spatial:]


def _epilogue(sch, after) -> None:
    for block in after[:-1]:  # the epilogue as one block: bias, ReLU, residual add...
        sch.compute_inline(block)


def _destride_columns(sch, pad, conv) -> None:
    """A strided conv reads every s-th column of its padded input; stored as (..., w % s, h, w // s)
    instead, the columns of one output row are contiguous and load as one vector."""
    from tvm.sym.pattern import detect_linear_equation

    written = sch.get(pad).writes[0].source
    block = sch.get(conv)
    column = block.iter_vars[3].var
    reads = [r for r in block.reads if r.source.same_as(written)]
    if len(reads) != 1 or len(written.shape) != 4:
        return
    coefficients = detect_linear_equation(reads[0].region[-1].min, [column])
    stride = int(coefficients[0]) if len(coefficients) == 2 else 1
    if stride > 1:
        sch.transform_layout(pad, ("write", 0), lambda n, c, h, w: (n, c, w % stride, h, w // stride), pad_value=0.0)


def matmul_lanes(width: int) -> int:
    """Output columns a matrix product computes together at most: whole cache lines of a weight
    row (4, 2 or 1 vectors), the most that divide ``width``."""
    return next((v * SIMD for v in (4, 2) if width % (v * SIMD) == 0), SIMD)


def matmul_tile(rows: int, width: int, registers: int = REGISTERS) -> tuple[int, int]:
    """(rows, columns) of a matrix product's register tile, one accumulator vector per row and
    SIMD columns, at most ``registers`` of them, each a divisor. Each reduction step loads one
    weight vector per SIMD columns and broadcasts one input value per row: the tile chosen does
    the most multiply-adds per load, the larger on a tie. Rows in a tile share each weight load,
    which matters when the weights do not fit in cache (VGG's classifier at batch 16)."""
    widest = matmul_lanes(width) // SIMD
    options = [(r, v) for v in (4, 2, 1) if v <= widest for r in range(1, registers // v + 1) if rows % r == 0]
    r, v = max(options, key=lambda tile: (tile[0] * tile[1] / (tile[0] + tile[1]), tile[0] * tile[1]))
    return r, v * SIMD


class Matmul(_Rule):
    def schedule(self, sch, target, tunable: bool = False) -> bool:
        found = _one_reduction(sch)
        if found is None:
            return False
        before, product, after = found
        kinds = _iter_kinds(sch, product)
        if not (2 <= len(kinds) <= 4 and kinds.endswith("SR") and set(kinds[:-1]) == {"S"}) or before:
            return False
        if len(sch.get_loops(product)) != len(kinds) or len(sch.get(product).reads) != 2:
            return False
        _epilogue(sch, after)
        *outer, rows, columns, reduce = sch.get_loops(product)
        registers = accumulator_registers(target)
        row_tile, lanes = matmul_tile(_extent(sch, rows), _extent(sch, columns), registers)
        row_blocks, row = _tile(sch, rows, row_tile, registers, tunable)
        column_blocks, column = sch.split(columns, [None, lanes])
        sch.reorder(*outer, row_blocks, column_blocks, reduce, row, column)
        _register_tile(sch, product, at=column_blocks, parallel=[*outer, row_blocks, column_blocks], unrolled=[row],
                       lanes=column, reduce=reduce, others=[], epilogue=_last(after))  # fmt: skip
        return True


class BlockedMatmul(_Rule):
    """A matrix product whose output is channel-blocked, ``[..., C/b, columns, b]``, from weights
    packed ``[..., C/b, K, b]``, its reduction one loop or several (the perforated conv's implicit
    GEMM: input channels and the window): the blocked conv's register tile, one or two channel
    blocks by a few columns (``blocked_tile``), a vector of weights times a broadcast value of the
    column per step."""

    def schedule(self, sch, target, tunable: bool = False) -> bool:
        found = _loop_nest(sch)
        if found is None:
            return False
        before, product, after, spatial, reduce = found
        if len(spatial) not in (3, 4) or before or _extent(sch, spatial[-1]) != SIMD:
            return False
        _epilogue(sch, after)
        *outer, chunks, columns, lanes = spatial
        registers = accumulator_registers(target)
        chunk_tile, column_tile = blocked_tile(_extent(sch, chunks), _extent(sch, columns), registers)
        chunk_blocks, chunk = _tile(sch, chunks, chunk_tile, 2, tunable)
        column_blocks, column = _tile(sch, columns, column_tile, registers, tunable)
        sch.reorder(*outer, chunk_blocks, column_blocks, *reduce, column, chunk, lanes)
        parallel = [*outer, chunk_blocks, column_blocks]
        _register_tile(sch, product, at=column_blocks, parallel=parallel, unrolled=[column, chunk], lanes=lanes,
                       reduce=reduce[0], others=[], epilogue=_last(after))  # fmt: skip
        return True


class Window(_Rule):
    def schedule(self, sch, target, tunable: bool = False) -> bool:
        found = _loop_nest(sch)
        if found is None:
            return False
        before, window, after, spatial, reduce = found
        if len(spatial) < 2:
            return False
        _epilogue(sch, after)
        *outer, inner = spatial
        sch.reorder(*outer, *reduce, inner)
        sch.parallel(sch.fuse(*outer))
        inner_blocks, lanes = sch.split(inner, [None, SIMD])
        sch.reorder(inner_blocks, *reduce)
        sch.vectorize(lanes)
        sch.decompose_reduction(window, reduce[0])
        for block in before + after[-1:]:
            _parallel_vectorize(sch, block)
        return True


class Elementwise(_Rule):
    def schedule(self, sch, target, tunable: bool = False) -> bool:
        blocks = _blocks(sch)
        if not blocks or any(set(_iter_kinds(sch, b)) != {"S"} for b in blocks):
            return False
        for block in blocks[:-1]:
            try:
                sch.compute_inline(block)
            except Exception:  # noqa: BLE001 - a block that cannot inline is scheduled on its own
                _parallel_vectorize(sch, block)
        _parallel_vectorize(sch, blocks[-1])
        return True
