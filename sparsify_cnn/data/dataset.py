"""Data sets as three fixed splits: train (for training), calibration (for searches) and test
(held out, so that calibration overfitting shows)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from ..errors import DataError, check_finite

SPLIT_NAMES = ("train", "calib", "test")
MAX_CLASSES = 100_000  # labels are class indices: a model gets one output per class
FRACTIONS = (0.6, 0.2, 0.2)


@dataclass(frozen=True)
class Split:
    """Images (N, C, H, W float32) and labels (N int64), or no labels for label-free data."""

    x: torch.Tensor
    y: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch_size: int):
        """(x, y) batches in order; y is None for label-free data."""
        for start in range(0, len(self.x), batch_size):
            end = start + batch_size
            yield self.x[start:end], None if self.y is None else self.y[start:end]


@dataclass(frozen=True)
class Dataset:
    """A named data set with its three splits."""

    name: str
    train: Split
    calib: Split
    test: Split
    num_classes: int | None  # None for label-free data

    @property
    def labeled(self) -> bool:
        return self.train.y is not None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])

    def split(self, name: str) -> Split:
        if name not in SPLIT_NAMES:
            raise DataError(f"unknown split '{name}'; choose one of: {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)

    def fingerprint(self) -> str:
        """A short hash of every split's images and labels: plans record which data chose them."""
        digest = hashlib.sha256(self.name.encode())
        for name in SPLIT_NAMES:
            split = self.split(name)
            digest.update(split.x.numpy().tobytes())
            if split.y is not None:
                digest.update(split.y.numpy().tobytes())
        return digest.hexdigest()[:16]

    def check_model(self, input_shape: tuple[int, ...], num_outputs: int | None = None) -> None:
        """Raise a DataError when this data cannot feed a model with ``input_shape`` (C, H, W)
        or has labels beyond its ``num_outputs`` classes."""
        if tuple(input_shape) != self.input_shape:
            raise DataError(
                f"data '{self.name}' has images of shape {self.input_shape}; "
                f"the model takes {tuple(input_shape)} (C, H, W)"
            )
        if num_outputs is not None and self.num_classes is not None and self.num_classes > num_outputs:
            raise DataError(
                f"data '{self.name}' has labels up to {self.num_classes - 1}; "
                f"the model has {num_outputs} outputs"
            )


def make_dataset(name: str, x: np.ndarray, y: np.ndarray | None, seed: int = 0) -> Dataset:
    """Validate arrays and split them (stratified when labelled) into train / calib / test.

    ``x`` is (N, C, H, W) or (N, H, W); ``y`` is N integer labels from 0, or None.
    """
    x = _images(name, x)
    n = len(x)
    if y is not None:
        y = _labels(name, y, n)
    if n < 3:
        raise DataError(f"data '{name}' has {n} samples; at least 3 are needed (train, calib, test)")
    index = np.arange(n)
    stratify = y if y is not None and np.bincount(y).min() >= 3 else None
    first, rest = FRACTIONS[0], FRACTIONS[1] + FRACTIONS[2]
    train, other = train_test_split(index, train_size=first, test_size=rest, random_state=seed, stratify=stratify)
    strat_other = y[other] if stratify is not None else None
    if strat_other is not None and np.unique(strat_other, return_counts=True)[1].min() < 2:
        strat_other = None  # too few of some class left to stratify the calib / test halves
    calib, test = train_test_split(other, test_size=0.5, random_state=seed, stratify=strat_other)
    splits = [_split(x, y, np.sort(part)) for part in (train, calib, test)]
    num_classes = int(y.max()) + 1 if y is not None else None
    return Dataset(name, *splits, num_classes=num_classes)


def _split(x: np.ndarray, y: np.ndarray | None, index: np.ndarray) -> Split:
    return Split(torch.from_numpy(x[index]), None if y is None else torch.from_numpy(y[index]))


def _images(name: str, x) -> np.ndarray:
    x = np.asarray(x)
    if x.size == 0:
        raise DataError(f"data '{name}' is empty")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(f"data '{name}' has images of type {x.dtype}; expected numbers")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"data '{name}' has images of shape {x.shape}; expected (N, C, H, W) or (N, H, W)")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf: reported next
        x = np.ascontiguousarray(x, dtype=np.float32)
    check_finite(x, f"data '{name}' has images", DataError)
    return x


def _labels(name: str, y, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"data '{name}' has labels of shape {y.shape}; expected ({n},), one per image")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating):
            check_finite(y, f"data '{name}' has labels", DataError)
        if not (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y))):
            raise DataError(f"data '{name}' has labels of type {y.dtype} that are not whole numbers; "
                            f"expected integer class indices")  # fmt: skip
    # checked before the cast (1e300 or 2**63 would wrap) and before anything counts per class
    shown = (lambda v: f"{int(v):,}") if np.issubdtype(y.dtype, np.integer) else (lambda v: f"{v:g}")
    if y.min() < 0:
        raise DataError(f"data '{name}' has negative labels (smallest {shown(y.min())}); expected classes 0..K-1")
    if y.max() >= MAX_CLASSES:
        raise DataError(f"data '{name}' has label {shown(y.max())}; expected classes 0..K-1 with K at most "
                        f"{MAX_CLASSES:,}")  # fmt: skip
    return y.astype(np.int64)
