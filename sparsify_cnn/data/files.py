"""User data: an .npz file of arrays ``x`` (and ``y``), or a folder of images (one subfolder per
class, or images alone for label-free calibration).

Both are read as if hostile: an array's size is read from its .npy header and checked before
anything is allocated, objects are never unpickled, and an image's size is read from its header
and checked before it is decoded.
"""

from __future__ import annotations

import contextlib
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError, first_line
from ..npyfile import read_npy
from .dataset import Dataset, make_dataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
MAX_ARRAY_BYTES = 8 * 2**30  # one array as stored, or as the float32 images it becomes
MAX_IMAGE_PIXELS = 8192 * 8192  # one image of a folder, from its header, before decoding
NPY_MAGIC = b"\x93NUMPY"
# zipfile, zlib and numpy's header parser fail in these ways on broken or hostile archives
_ARCHIVE_ERRORS = (OSError, ValueError, RuntimeError, EOFError, NotImplementedError, zipfile.BadZipFile, zlib.error)


def load_npz(path: Path, seed: int = 0) -> Dataset:
    """Arrays ``x`` (N, C, H, W) or (N, H, W) and optional integer labels ``y`` (N)."""
    arrays, members = read_npz(path, ("x", "y"))
    if "x" not in arrays:
        more = f" and {len(members) - 10:,} more" if len(members) > 10 else ""
        raise DataError(f"data file '{path}' has no array 'x' (it has: {', '.join(members[:10]) or 'nothing'}{more})")
    return make_dataset(str(path), arrays["x"], arrays.get("y"), seed=seed)


def read_npz(path: Path, names: tuple[str, ...]) -> tuple[dict[str, np.ndarray], list[str]]:
    """The arrays ``names`` that the .npz file ``path`` has, and the names of all its arrays.
    Each is checked from its header before it is read: numbers only (no pickled objects), at
    most ``MAX_ARRAY_BYTES``, and no more than the archive holds for it."""
    _refuse_npy(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
            arrays = {name: _read_member(archive, members[name], path) for name in names if name in members}
    except _ARCHIVE_ERRORS as error:
        raise DataError(f"data file '{path}' is not a readable .npz archive: {first_line(error)}") from error
    return arrays, sorted(members)


def _refuse_npy(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            start = f.read(len(NPY_MAGIC))
    except OSError as error:
        raise DataError(f"data file '{path}' cannot be read: {first_line(error)}") from error
    if start == NPY_MAGIC:
        raise DataError(f"data file '{path}' is a single .npy array, not an .npz archive: "
                        f"save images and labels with numpy.savez(path, x=images, y=labels)")  # fmt: skip


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    where = f"array '{info.filename.removesuffix('.npy')}' of data file '{path}'"
    with archive.open(info) as f:
        return read_npy(f, info.file_size, where, DataError, limit=MAX_ARRAY_BYTES)


def load_image_folder(
    root: Path, input_shape: tuple[int, int, int] | None = None, seed: int = 0
) -> Dataset:
    """Images under ``root/<class>/`` (classes in sorted order), or directly under ``root``
    (label-free). Scaled to [0, 1] and resized to ``input_shape`` (C, H, W) when given, else to
    the first image's size with 1 channel for greyscale and 3 otherwise."""
    classes = sorted(p for p in _entries(root) if p.is_dir() and not p.name.startswith("."))
    if classes:
        files = [(f, label) for label, folder in enumerate(classes) for f in _images_in(folder)]
        empty = [c.name for c in classes if not _images_in(c)]
        if empty:
            raise DataError(f"class folder '{root / empty[0]}' has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    else:
        files = [(f, -1) for f in _images_in(root)]
    if not files:
        raise DataError(f"image folder '{root}' has no images and no class subfolders")
    if input_shape is None:
        mode, (width, height) = _header(files[0][0])
        input_shape = (1 if mode in ("L", "1", "I;16", "I") else 3, height, width)
    channels, height, width = input_shape
    if channels not in (1, 3):
        raise DataError(f"image folder '{root}' cannot feed a model with {channels} input channels (1 or 3)")
    size = len(files) * channels * height * width * 4
    if size > MAX_ARRAY_BYTES:
        raise DataError(f"image folder '{root}' would take {size / 2**30:,.1f} GiB as {len(files)} images of "
                        f"{channels}x{height}x{width}; at most {MAX_ARRAY_BYTES / 2**30:g} GiB")  # fmt: skip
    x = np.empty((len(files), channels, height, width), dtype=np.float32)
    for i, (file, _) in enumerate(files):
        array = _read(file, "L" if channels == 1 else "RGB", (width, height))
        x[i] = array[None] if channels == 1 else array.transpose(2, 0, 1)
    y = np.array([label for _, label in files]) if classes else None
    return make_dataset(str(root), x, y, seed=seed)


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as error:
        raise DataError(f"image folder '{folder}' cannot be read: {first_line(error)}") from error


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in _entries(folder) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _header(file: Path) -> tuple[str, tuple[int, int]]:
    """(mode, (width, height)) of an image, from its header alone."""
    with _opened(file) as image:
        return image.mode, image.size


def _read(file: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    """The image decoded, converted to ``mode``, resized to ``size`` and scaled to [0, 1]."""
    with _opened(file) as image:
        try:
            image.load()
            resized = image.convert(mode).resize(size, Image.BILINEAR)
        except Exception as error:  # PIL's decoders raise OSError, SyntaxError, ValueError, struct.error...
            raise DataError(f"image '{file}' cannot be read: {first_line(error)}") from error
    return np.asarray(resized, dtype=np.float32) / 255.0


@contextlib.contextmanager
def _opened(file: Path):
    """``Image.open`` with the pixel count bounded (from the header, before decoding) and PIL's
    decompression-bomb warning and error turned into a DataError naming the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(file)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise DataError(f"image '{file}' is too large to decode: {first_line(error)}") from error
        except Exception as error:  # not an image, truncated, unreadable: PIL raises many kinds
            raise DataError(f"image '{file}' cannot be read: {first_line(error)}") from error
        with image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise DataError(f"image '{file}' is {width}x{height} pixels; at most {MAX_IMAGE_PIXELS:,} "
                                f"are decoded (a decompression bomb?)")  # fmt: skip
            yield image
