"""Data sets: the built-in digits, .npz files and image folders, as fixed train / calib / test
splits."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from ..errors import DataError
from .dataset import Dataset, Split, make_dataset
from .digits import NATIVE_SHAPE, load_digits
from .files import load_image_folder, load_npz

__all__ = ["IMAGENET", "Dataset", "Split", "load_data", "normalized", "parse_normalization", "load_digits", "load_image_folder", "load_npz", "make_dataset"]

BUILTIN = ("digits",)


IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # what torchvision's and timm's weights expect


def load_data(
    spec: str,
    input_shape: tuple[int, int, int] | None = None,
    seed: int = 0,
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> Dataset:
    """Load ``digits``, an ``.npz`` file or an image folder, resized to ``input_shape`` (C, H, W)
    where the source allows it, then ``(x - mean) / std`` per channel if ``normalize`` is
    (mean, std). Example::

        data = load_data("digits", (1, 28, 28))
        data.calib.x.shape  # (359, 1, 28, 28)
        load_data("images/", (3, 224, 224), normalize=IMAGENET)
    """
    dataset = _load(spec, input_shape, seed)
    return dataset if normalize is None else normalized(dataset, *normalize)


def _load(spec: str, input_shape: tuple[int, int, int] | None, seed: int) -> Dataset:
    if spec == "digits":
        return load_digits(input_shape or NATIVE_SHAPE, seed=seed)
    path = Path(spec)
    if not path.exists():
        raise DataError(f"data '{spec}' does not exist; expected 'digits', an .npz file or an image folder")
    if path.is_dir():
        return load_image_folder(path, input_shape, seed=seed)
    if not path.is_file():  # a pipe or device would block or never end
        raise DataError(f"data '{spec}' is not a regular file or a folder")
    if path.suffix.lower() == ".npz":
        return load_npz(path, seed=seed)
    if path.suffix.lower() == ".npy":
        raise DataError(f"data '{spec}' is a single .npy array; --data takes an .npz archive of arrays x and y "
                        f"(numpy.savez(path, x=images, y=labels)) or an image folder")  # fmt: skip
    raise DataError(f"data '{spec}' is not an .npz file or an image folder")


def normalized(dataset: Dataset, mean: tuple[float, ...], std: tuple[float, ...]) -> Dataset:
    """``dataset`` with every split's images mapped to ``(x - mean) / std``, per channel (or one
    value for all channels)."""
    channels = dataset.input_shape[0]
    for name, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, channels):
            raise DataError(f"--normalize gives {len(values)} {name} values for images of {channels} channels")
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def split(part: Split) -> Split:
        return dataclasses.replace(part, x=(part.x - mean_t) / std_t)

    return dataclasses.replace(dataset, train=split(dataset.train), calib=split(dataset.calib), test=split(dataset.test))


def parse_normalization(text: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``"imagenet"``, or ``"MEAN,STD"`` with one number or one per channel joined by ':'
    (``"0.5,0.25"``, ``"0.485:0.456:0.406,0.229:0.224:0.225"``) -> (mean, std)."""
    if text.strip().lower() == "imagenet":
        return IMAGENET
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        mean, std = (tuple(float(v) for v in part.split(":")) for part in parts)
    except ValueError:
        raise ValueError(f"'{text}' is not MEAN,STD (numbers, per channel joined by ':') or 'imagenet'") from None
    if len(mean) != len(std) and 1 not in (len(mean), len(std)):
        raise ValueError(f"'{text}' gives {len(mean)} means and {len(std)} standard deviations")
    if not all(math.isfinite(v) for v in mean + std) or any(v <= 0 for v in std):
        raise ValueError(f"'{text}': means must be finite and standard deviations finite and > 0")
    return mean, std
