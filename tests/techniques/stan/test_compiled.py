import pytest
import torch
import torch.nn.functional as F

from sparsify_cnn.codegen.lowering.dots import lanes
from sparsify_cnn.techniques.stan.compiled import compiled, geometry, skip_conv, zero_covered
from sparsify_cnn.techniques.stan.entry import pack_bits, pack_channels

pytestmark = pytest.mark.tvm  # compiles with TVM: `pytest -m 'not tvm'` leaves it out

# (C_in, T, kernel, padding, stride, dilation): runs of full SIMD blocks (16 * 3 = 48), runs
# with a vector and a scalar tail (12 * 3 = 36 = 16 + 16 + 4), and short runs that go through
# the column buffer: 3 * 5 = 15 (K = 75, padded to 80), and one run per tap (dilation 2 in
# width: runs of C_in = 8, K = 48).
GEOMETRIES = [
    (16, 24, (3, 3), (1, 1), (1, 1), (1, 1)),
    (12, 8, (3, 3), (0, 2), (2, 1), (1, 1)),
    (3, 10, (5, 5), (2, 2), (1, 1), (1, 1)),
    (8, 6, (3, 2), (1, 0), (1, 2), (2, 2)),
]


@pytest.mark.parametrize("c_in, t, kernel, padding, stride, dilation", GEOMETRIES)
def test_computes_exactly_the_uncovered_entries(c_in, t, kernel, padding, stride, dilation):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(t, c_in, *kernel, generator=gen)
    bias = torch.randn(t, generator=gen)
    kernels = compiled.cache_info().currsize
    for batch in (3, 2):  # the batch is symbolic: one kernel serves both
        x = torch.randn(batch, c_in, 11, 13, generator=gen)
        dense = F.conv2d(x, weight, bias, stride, padding, dilation).permute(0, 2, 3, 1)
        covered = torch.rand(dense.shape, generator=gen) < 0.6
        out = torch.full(dense.shape, 7.0)  # covered entries must keep what is there
        computed = skip_conv(x, weight, bias, covered, out, padding, stride, dilation, packed=False)
        assert computed == int((~covered).sum())
        expected = torch.where(covered, torch.full((), 7.0), dense)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)
    assert compiled.cache_info().currsize == kernels + 1


@pytest.mark.parametrize("c_in, t, kernel, padding, stride, dilation", GEOMETRIES[1:3])
def test_reads_packed_bits_and_writes_zeros(c_in, t, kernel, padding, stride, dilation):
    gen = torch.Generator().manual_seed(2)
    x, weight = torch.randn(3, c_in, 11, 13, generator=gen), torch.randn(t, c_in, *kernel, generator=gen)
    dense = F.conv2d(x, weight, None, stride, padding, dilation).permute(0, 2, 3, 1)
    covered = dense <= 0.3
    out = torch.full(dense.shape, float("nan"))  # every entry must be written
    computed = skip_conv(
        x, weight, None, pack_bits(covered.reshape(3, -1)), out, padding, stride, dilation, packed=True
    )
    torch.testing.assert_close(out, dense * ~covered, rtol=1e-5, atol=1e-4)
    assert computed == int((~covered).sum())


@pytest.mark.parametrize(
    "c_in, width, blocks",
    [(16, 90, (False, 2, 13)), (3, 20, (True, 6, 5))],  # 256 // 90 positions; 16 KiB // (20 * 32 floats)
)
def test_row_blocks_cover_the_map_when_they_do_not_divide_it(c_in, width, blocks):
    gen = torch.Generator().manual_seed(3)
    x, weight = torch.randn(2, c_in, 25, width, generator=gen), torch.randn(8, c_in, 3, 3, generator=gen)
    g = geometry(x.shape, weight.shape, (1, 1), (1, 1), (1, 1), True)
    assert (g.columns, g.block_rows, g.row_blocks) == blocks  # the last block is short
    dense = F.conv2d(x, weight, None, 1, 1).permute(0, 2, 3, 1)
    covered = torch.rand(dense.shape, generator=gen) < 0.5
    out = torch.full(dense.shape, float("nan"))
    skip_conv(x, weight, None, pack_bits(covered.reshape(2, -1)), out, (1, 1), (1, 1), (1, 1), packed=True)
    torch.testing.assert_close(out, dense * ~covered, rtol=1e-5, atol=1e-4)


def test_without_bias_and_all_or_nothing_covered():
    gen = torch.Generator().manual_seed(1)
    x, weight = torch.randn(2, 8, 7, 7, generator=gen), torch.randn(4, 8, 3, 3, generator=gen)
    dense = F.conv2d(x, weight, None, 1, 1).permute(0, 2, 3, 1)
    for covered, expected in (
        (torch.zeros(dense.shape, dtype=torch.bool), dense),
        (torch.ones(dense.shape, dtype=torch.bool), torch.zeros(dense.shape)),
    ):
        out = torch.zeros(dense.shape)
        skip_conv(x, weight, None, covered, out, (1, 1), (1, 1), (1, 1), packed=False)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)


def test_geometry_splits_windows_into_contiguous_runs():
    dense_rows = geometry((1, 32, 16, 16), (64, 32, 5, 5), (2, 2), (1, 1), (1, 1), True)
    assert (dense_rows.segments, dense_rows.length, dense_rows.out_hw) == (5, 160, (16, 16))
    assert not dense_rows.columns and dense_rows.rows == (5, 160)
    taps = geometry((1, 32, 16, 16), (64, 32, 3, 3), (0, 0), (1, 1), (1, 2), False)
    assert (taps.segments, taps.length, taps.out_hw) == (9, 32, (14, 12))
    first = geometry((1, 3, 32, 32), (32, 3, 5, 5), (2, 2), (1, 1), (1, 1), True)
    assert first.columns and first.rows == (1, 80) and first.block_rows == 1  # 32 * 80 floats a row
    assert lanes(160, 4) == 16 and lanes(15, 4) == 8


@pytest.mark.parametrize("shape", [(16, 5, 7), (3, 4, 5)])  # whole bytes per position, or not
def test_zeroing_covered_entries_in_place(shape):
    gen = torch.Generator().manual_seed(4)
    out = torch.randn(3, *shape, generator=gen)
    covered = torch.rand(out.shape, generator=gen) < 0.5
    expected = out * ~covered
    zero_covered(out, pack_channels(covered))
    assert torch.equal(out, expected)
