import math

import pytest
import torch

from sparsify_cnn.techniques.stan.entry import (
    EntryStore,
    estimate_bytes,
    pack_bits,
    pack_channels,
    unpack_bits,
)

SHAPES = {"conv1": (4, 6, 5), "block.conv2": (3, 3, 3)}  # (T, H', W'); 120 and 27 outputs (27: not whole bytes)


@pytest.mark.parametrize("n", [1, 7, 8, 27, 120, 1001])
def test_bits_round_trip(n):
    bits = torch.rand(5, n, generator=torch.Generator().manual_seed(n)) < 0.4
    packed = pack_bits(bits)
    assert packed.dtype == torch.uint8 and packed.shape == (5, math.ceil(n / 8))
    assert torch.equal(unpack_bits(packed, n), bits)
    # bit i of byte j is entry 8 j + i
    assert int(pack_bits(torch.tensor([[True, False, True] + [False] * 5]))[0, 0]) == 0b101


@pytest.mark.parametrize("shape", [(16, 3, 5), (8, 1, 1), (12, 2, 3), (3, 4, 4)])
def test_channel_packing_is_bit_packing_channels_last(shape):
    bits = torch.rand(3, *shape, generator=torch.Generator().manual_seed(1)) < 0.5
    assert torch.equal(pack_channels(bits), pack_bits(bits.permute(0, 2, 3, 1).reshape(3, -1)))


@pytest.mark.parametrize("variant", ["stan", "stan-lite"])
def test_memory_estimate_matches_the_allocation(variant):
    samples = 37
    store = EntryStore(SHAPES, samples, variant)
    assert store.nbytes == estimate_bytes(SHAPES, samples, variant)
    if variant == "stan":  # fp16 per output + the threshold per sample
        assert store.nbytes == samples * ((120 + 27) * 2 + 2 * 4)
    else:
        assert store.nbytes == samples * (15 + 4)


def _outputs(ids, seed=0):
    # A distinct, sample-specific output per sample id.
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(len(ids), *shape, generator=g) + ids.view(-1, 1, 1, 1) / 10 for name, shape in
            SHAPES.items()}  # fmt: skip


@pytest.mark.parametrize("variant", ["stan", "stan-lite"])
def test_rows_are_indexed_by_sample_id_whatever_the_order(variant):
    store = EntryStore(SHAPES, 10, variant)
    ids = torch.arange(10)
    outs = _outputs(ids)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    for part in order.split(4):  # written in shuffled batches
        for name, out in outs.items():
            store.write(name, part, out[part], 0.25)
    shuffled = torch.randperm(10, generator=torch.Generator().manual_seed(4))
    for part in shuffled.split(3):  # read in other shuffled batches
        for name, out in outs.items():
            covered, values = store.read(name, part)
            expected = out[part].permute(0, 2, 3, 1)
            if variant == "stan":
                assert torch.equal(covered, expected.half() <= torch.tensor(0.25).half())
                assert torch.equal(values, expected.half().float())
            else:
                assert values is None and torch.equal(covered, expected <= 0.25)


def test_unbuilt_samples_have_nothing_covered():
    for variant in ("stan", "stan-lite"):
        covered, _ = EntryStore(SHAPES, 4, variant).read("conv1", torch.tensor([0, 3]))
        assert covered.shape == (2, 6, 5, 4) and not covered.any()


def test_write_counts_the_covered_entries_and_keeps_huge_negatives_covered():
    store = EntryStore({"c": (1, 1, 3)}, 2, "stan")
    out = torch.tensor([[[[-1e9, 0.5, 2.0]]]])
    assert store.write("c", torch.tensor([1]), out, 1.0) == 2
    covered, values = store.read("c", torch.tensor([1]))
    assert covered.flatten().tolist() == [True, True, False] and values.flatten()[0] == -65504.0
