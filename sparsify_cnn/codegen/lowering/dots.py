"""Blocked dot products for CPU kernels that compute chosen outputs one at a time.

Where the work left after skipping is sparse per element (Spatial's predicted patches, STAN's
covered entries), no dense tile can skip, and predication inside a dense loop nest destroys
vectorisation. These kernels keep the *inner* loop dense instead: every output they compute
is a dot product of a weight row with an input window, with SIMD lanes and independent
accumulators running along the reduction, and the skipping happens between dot products.
The positions one channel computes go through its weight row together, up to 4 at a time, so
that each weight load serves several multiply-adds.

A kernel describes its rows with two functions that build TIR loads: ``weight(wp, c, s, k)``
(element ``k`` of segment ``s`` of channel ``c``'s row) and ``window(xs, base, pos, s, k)``
(the same element of output position ``pos``'s window; ``base`` is whatever else locates it).
The reduction is ``segments`` runs of ``length`` contiguous elements.

Accumulators are ``global`` buffers: TVM 0.27 puts ``local`` allocations on CPU through its
workspace allocator, while small ``global`` ones go on the stack and LLVM keeps them in registers.
"""

from __future__ import annotations

from collections.abc import Callable

from tvm.script import tirx as T

SIMD = 8  # fp32 lanes of one AVX2 register
BLOCK = 4  # positions computed together


def lanes(length: int, block: int) -> int:
    """SIMD lanes of each of ``block`` dot products computed together: about 8 registers of
    independent sums in all (FMA latency needs several in flight), fewer for short rows."""
    found = max(SIMD, 64 // block // SIMD * SIMD)
    while found > SIMD and length < 2 * found:
        found //= 2
    return found


def accumulators(length: int) -> int:
    """The size of the ``acc`` buffer the dot products of rows of ``length`` need."""
    return max(b * lanes(length, b) for b in range(1, BLOCK + 1))


def block_dot(block: int, segments: int, length: int, weight: Callable, window: Callable):
    """A macro: ``vals[at + b] = row c . window of position todo[at + b]`` for b < ``block``."""
    L = lanes(length, block)
    MAIN, VECTOR_TAIL, SCALAR_TAIL = length // L, length % L // SIMD, length % SIMD
    V0, S0 = MAIN * L, MAIN * L + VECTOR_TAIL * SIMD

    @T.macro
    def dot(wp, xs, acc, acc8, vals, todo, c, base, at):
        for i in T.vectorized(block * L):
            acc[i] = T.float32(0)
        for s in range(segments):
            for ko in range(MAIN):
                for b in T.unroll(block):
                    for i in T.vectorized(L):
                        acc[b * L + i] = acc[b * L + i] + weight(wp, c, s, ko * L + i) * window(
                            xs, base, todo[at + b], s, ko * L + i)  # fmt: skip
            for ko in range(VECTOR_TAIL):
                for b in T.unroll(block):
                    for i in T.vectorized(SIMD):
                        acc[b * L + i] = acc[b * L + i] + weight(wp, c, s, V0 + ko * SIMD + i) * window(
                            xs, base, todo[at + b], s, V0 + ko * SIMD + i)  # fmt: skip
            for j in range(SCALAR_TAIL):
                for b in T.unroll(block):
                    acc[b * L] = acc[b * L] + weight(wp, c, s, S0 + j) * window(xs, base, todo[at + b], s, S0 + j)
        for b in T.unroll(block):
            for i in T.vectorized(SIMD):
                acc8[i] = acc[b * L + i]
            for part in T.unroll(L // SIMD - 1):
                for i in T.vectorized(SIMD):
                    acc8[i] = acc8[i] + acc[b * L + (part + 1) * SIMD + i]
            for i in T.vectorized(4):
                acc8[i] = acc8[i] + acc8[i + 4]
            vals[at + b] = acc8[0] + acc8[1] + acc8[2] + acc8[3]

    return dot


def dot_products(most: int, segments: int, length: int, weight: Callable, window: Callable):
    """A macro: ``vals[0:count[0]]`` for the positions ``todo[0:count[0]]`` (at most ``most``),
    in blocks of up to 4."""
    dot1, dot2, dot3, dot4 = (block_dot(b, segments, length, weight, window) for b in range(1, BLOCK + 1))

    @T.macro
    def compute(wp, xs, acc, acc8, vals, todo, count, c, base):
        for chunk in range((most + BLOCK - 1) // BLOCK):
            if count[0] - chunk * BLOCK >= 4:
                dot4(wp, xs, acc, acc8, vals, todo, c, base, chunk * BLOCK)
            elif count[0] - chunk * BLOCK == 3:
                dot3(wp, xs, acc, acc8, vals, todo, c, base, chunk * BLOCK)
            elif count[0] - chunk * BLOCK == 2:
                dot2(wp, xs, acc, acc8, vals, todo, c, base, chunk * BLOCK)
            elif count[0] - chunk * BLOCK == 1:
                dot1(wp, xs, acc, acc8, vals, todo, c, base, chunk * BLOCK)

    return compute
