"""Data sets: the built-in digits, .npz files and image folders, as fixed train / calib / test
splits."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .dataset import Dataset, Split, make_dataset
from .digits import NATIVE_SHAPE, load_digits
from .files import load_image_folder, load_npz

__all__ = ["Dataset", "Split", "load_data", "load_digits", "load_image_folder", "load_npz", "make_dataset"]

BUILTIN = ("digits",)


def load_data(spec: str, input_shape: tuple[int, int, int] | None = None, seed: int = 0) -> Dataset:
    """Load ``digits``, an ``.npz`` file or an image folder, resized to ``input_shape`` (C, H, W)
    where the source allows it. Example::

        data = load_data("digits", (1, 28, 28))
        data.calib.x.shape  # (359, 1, 28, 28)
    """
    if spec == "digits":
        return load_digits(input_shape or NATIVE_SHAPE, seed=seed)
    path = Path(spec)
    if not path.exists():
        raise DataError(f"data '{spec}' does not exist; expected 'digits', an .npz file or an image folder")
    if path.is_dir():
        return load_image_folder(path, input_shape, seed=seed)
    if path.suffix.lower() == ".npz":
        return load_npz(path, seed=seed)
    raise DataError(f"data '{spec}' is not an .npz file or an image folder")
