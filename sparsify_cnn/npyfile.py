""".npy data read without trusting its header: the shape and dtype it claims are checked against
the bytes that follow (a header may claim terabytes) and against what the reader expects, before
anything is allocated. Object arrays are refused: loading them unpickles. Torch-free::

    with open("x.npy", "rb") as f:
        x = read_npy(f, os.fstat(f.fileno()).st_size, "input 'x.npy'", InputError, shape=(1, 3, 32, 32))
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib import format as npy


def read_npy(f, size: int, label: str, error: type[Exception], shape=None, dtype=None, wanted="expected",
             limit: int | None = None) -> np.ndarray:  # fmt: skip
    """The array in ``f`` (``size`` bytes from its current position), else ``error`` naming
    ``label``; ``shape`` and ``dtype``, if given, are required (``wanted`` says by whom). With
    ``limit``, an array of more bytes (as stored, or as the float32 it may become) is refused."""
    start = f.tell()
    try:
        version = npy.read_magic(f)
        if version == (1, 0):
            found_shape, fortran, found_dtype = npy.read_array_header_1_0(f)
        elif version == (2, 0):
            found_shape, fortran, found_dtype = npy.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as cause:
        raise error(f"{label} is not a .npy array: {_clip(cause)}") from cause
    if found_dtype.hasobject:
        raise error(f"{label} holds Python objects ({found_dtype}); only numeric arrays are read")
    claimed = math.prod(found_shape) * found_dtype.itemsize
    if limit is not None and math.prod(found_shape) * max(found_dtype.itemsize, 4) > limit:
        gib = math.prod(found_shape) * max(found_dtype.itemsize, 4) / 2**30
        raise error(f"{label} has shape {tuple(found_shape)} of {found_dtype}: {gib:,.1f} GiB, over the "
                    f"{limit / 2**30:g} GiB an array may take")  # fmt: skip
    held = size - (f.tell() - start)
    if claimed != held:
        raise error(f"{label} claims {claimed:,} bytes of {found_dtype} {tuple(found_shape)} but holds {held:,}")
    if shape is not None and tuple(found_shape) != tuple(shape):
        raise error(f"{label} has shape {tuple(found_shape)}; {wanted} {tuple(shape)}")
    if dtype is not None and found_dtype != np.dtype(dtype):
        raise error(f"{label} has dtype {found_dtype}; {wanted} {np.dtype(dtype)}")
    f.seek(start)
    try:
        return npy.read_array(f, allow_pickle=False)
    except (ValueError, OSError, EOFError) as cause:
        raise error(f"{label} is unreadable: {_clip(cause)}") from cause


def _clip(cause: BaseException, limit: int = 120) -> str:
    text = " ".join(str(cause).split()) or type(cause).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
