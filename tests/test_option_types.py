import click
import pytest

from sparsify_cnn.errors import InputError
from sparsify_cnn.option_types import MemorySize, format_bytes, parse_bytes


def test_sizes():
    assert parse_bytes("512MB") == 512_000_000 and parse_bytes("2GiB") == 2 * 2**30
    assert parse_bytes("1000") == 1000 and parse_bytes("1.5k") == 1500
    with pytest.raises(InputError, match="not a memory size"):
        parse_bytes("lots")
    assert format_bytes(3 * 2**20) == "3.00 MiB" and format_bytes(12) == "12 B"


@pytest.mark.parametrize(("text", "message"), [("0", "must be at least 1 byte"), ("lots", "not a memory size"),
                                              ("9" * 400 + "GiB", "beyond any memory size")])  # fmt: skip
def test_memory_size_refuses(text, message):
    with pytest.raises(click.BadParameter, match=message):
        MemorySize().convert(text, None, None)


def test_memory_size_reads_units():
    assert MemorySize().convert("1.5GiB", None, None) == 3 * 2**29 and MemorySize().convert(7, None, None) == 7
