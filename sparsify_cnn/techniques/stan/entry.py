"""The entry matrix E: per training sample and output activation of each covered layer, whether
the entry is covered and, for STAN, the value to replay.

- STAN stores every output in fp16, and the threshold each sample was built with (one fp32 per
  sample and layer): an entry is covered when its stored value is <= that threshold, so what is
  replayed is exactly what was compared.
- STAN-lite stores one bit per entry (covered: the output was <= theta), 8 to a byte.

Rows are indexed by sample id, so the data order may change between epochs, and are kept
channels-last (H', W', T): the skipping forward works per output position. The memory follows
from the shapes alone, so it is checked against a limit before anything is allocated
(``estimate_bytes`` equals ``EntryStore.nbytes``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ...errors import InputError

VARIANTS = {"stan": "fp16 value per entry", "stan-lite": "1 bit per entry"}
_FP16_MAX = 65504.0
_SHIFTS = torch.arange(8, dtype=torch.uint8)
# Eight 0/1 bytes read as one little-endian int64, times this, hold their bits in the top byte:
# bit i is byte i (no carries reach it: each lower byte of the product sums to less than 256).
_GATHER_BITS = 0x0102040810204080


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise InputError(f"unknown STAN variant '{variant}'; choose one of: {', '.join(VARIANTS)}")


def row_bytes(outputs: int, variant: str) -> int:
    """Bytes one sample needs for a layer with ``outputs`` output activations."""
    check_variant(variant)
    return 2 * outputs + 4 if variant == "stan" else math.ceil(outputs / 8)


def estimate_bytes(shapes: Mapping[str, tuple[int, int, int]], samples: int, variant: str) -> int:
    """Bytes of the entry matrix for ``samples`` samples and layers with output ``shapes`` (T, H', W').

    ``estimate_bytes({"conv1": (32, 32, 32)}, 1000, "stan")`` is 1000 * (32768 * 2 + 4) = 65,540,000.
    """
    return sum(samples * row_bytes(math.prod(shape), variant) for shape in shapes.values())


class EntryStore:
    """E for every covered layer: ``write`` in an entry-matrix epoch, ``read`` in a skipping one."""

    def __init__(self, shapes: Mapping[str, tuple[int, int, int]], samples: int, variant: str):
        check_variant(variant)
        self.shapes = {name: tuple(int(s) for s in shape) for name, shape in shapes.items()}
        self.samples = samples
        self.variant = variant
        self.rows: dict[str, torch.Tensor] = {}
        self.thetas: dict[str, torch.Tensor] = {}
        for name, shape in self.shapes.items():
            if variant == "stan":
                self.rows[name] = torch.zeros((samples, shape[1], shape[2], shape[0]), dtype=torch.float16)
                self.thetas[name] = torch.full((samples,), float("-inf"))  # not built yet: nothing covered
            else:
                self.rows[name] = torch.zeros((samples, math.ceil(math.prod(shape) / 8)), dtype=torch.uint8)

    @property
    def nbytes(self) -> int:
        tensors = [*self.rows.values(), *self.thetas.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def write(self, layer: str, ids: torch.Tensor, out: torch.Tensor, theta: float) -> int:
        """Record the outputs ``out`` (B, T, H', W') of samples ``ids``; return how many are covered."""
        out = out.detach()
        if self.variant == "stan-lite":
            covered = out <= theta
            self.rows[layer].index_copy_(0, ids, pack_channels(covered))
            return int(torch.count_nonzero(covered))
        theta = float(torch.tensor(theta).half())  # compared in fp16, when built and when read
        # finite: -inf would not compare as covered
        values = out.permute(0, 2, 3, 1).clamp(-_FP16_MAX, _FP16_MAX).half()
        self.rows[layer].index_copy_(0, ids, values)
        self.thetas[layer][ids] = theta
        return int(torch.count_nonzero(values <= theta))

    def bits(self, layer: str, ids: torch.Tensor) -> torch.Tensor:
        """STAN-lite's rows of samples ``ids`` as stored: (B, bytes), entry e of (H', W', T) is
        bit e % 8 of byte e // 8."""
        if self.variant != "stan-lite":
            raise ValueError("only STAN-lite stores bits")
        return self.rows[layer][ids]

    def read(self, layer: str, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(covered, values) of samples ``ids``, both (B, H', W', T); values is None for STAN-lite
        (its covered entries are 0)."""
        t, h, w = self.shapes[layer]
        if self.variant == "stan":
            stored = self.rows[layer][ids]
            theta = self.thetas[layer][ids].half().view(-1, 1, 1, 1)
            return stored <= theta, stored.float()
        return unpack_bits(self.rows[layer][ids], t * h * w).view(len(ids), h, w, t), None


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """(B, n) bool -> (B, ceil(n / 8)) uint8; bit i of byte j is entry 8 j + i."""
    b, n = bits.shape
    if n % 8:
        bits = torch.cat([bits, bits.new_zeros((b, 8 - n % 8))], 1)
    words = bits.contiguous().view(torch.uint8).view(torch.int64)
    return ((words * _GATHER_BITS) >> 56 & 0xFF).to(torch.uint8)


def pack_channels(bits: torch.Tensor) -> torch.Tensor:
    """(B, T, H', W') bool -> E's rows, (B, ceil(H' W' T / 8)) uint8 over (H', W', T): what
    ``pack_bits`` gives for the channels-last bits, faster when T is a multiple of 8 (a byte is
    then 8 channels at one position: packed across planes, then transposed)."""
    b, t, h, w = bits.shape
    if t % 8:
        return pack_bits(bits.permute(0, 2, 3, 1).reshape(b, -1))
    planes = bits.contiguous().view(torch.uint8).view(b, t // 8, 8, h, w)
    packed = (planes << _SHIFTS.view(1, 1, 8, 1, 1)).sum(2, dtype=torch.uint8)
    return packed.permute(0, 2, 3, 1).reshape(b, -1)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The inverse of ``pack_bits``: (B, ceil(n / 8)) uint8 -> (B, n) bool."""
    bits = (packed.unsqueeze(2) >> _SHIFTS & 1).view(torch.bool).view(len(packed), -1)
    return bits if bits.shape[1] == n else bits[:, :n].contiguous()


