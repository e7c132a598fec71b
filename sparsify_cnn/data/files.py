"""User data: an .npz file of arrays ``x`` (and ``y``), or a folder of images (one subfolder per
class, or images alone for label-free calibration)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .dataset import Dataset, make_dataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


def load_npz(path: Path, seed: int = 0) -> Dataset:
    """Arrays ``x`` (N, C, H, W) or (N, H, W) and optional integer labels ``y`` (N)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        raise DataError(f"data file '{path}' is not a readable .npz archive: {error}") from error
    if "x" not in arrays:
        raise DataError(f"data file '{path}' has no array 'x' (it has: {', '.join(arrays) or 'nothing'})")
    return make_dataset(str(path), arrays["x"], arrays.get("y"), seed=seed)


def load_image_folder(
    root: Path, input_shape: tuple[int, int, int] | None = None, seed: int = 0
) -> Dataset:
    """Images under ``root/<class>/`` (classes in sorted order), or directly under ``root``
    (label-free). Scaled to [0, 1] and resized to ``input_shape`` (C, H, W) when given, else to
    the first image's size with 1 channel for greyscale and 3 otherwise."""
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
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
        first = _open(files[0][0])
        input_shape = (1 if first.mode in ("L", "1", "I;16", "I") else 3, first.height, first.width)
    channels, height, width = input_shape
    if channels not in (1, 3):
        raise DataError(f"image folder '{root}' cannot feed a model with {channels} input channels (1 or 3)")
    mode = "L" if channels == 1 else "RGB"
    x = np.empty((len(files), channels, height, width), dtype=np.float32)
    for i, (file, _) in enumerate(files):
        image = _open(file).convert(mode).resize((width, height), Image.BILINEAR)
        array = np.asarray(image, dtype=np.float32) / 255.0
        x[i] = array[None] if channels == 1 else array.transpose(2, 0, 1)
    y = np.array([label for _, label in files]) if classes else None
    return make_dataset(str(root), x, y, seed=seed)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _open(file: Path) -> Image.Image:
    try:
        image = Image.open(file)
        image.load()
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"image '{file}' cannot be read: {error}") from error
    return image
