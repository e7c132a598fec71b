"""scikit-learn's handwritten digits (1797 images of 8x8, ten classes), shipped with scikit-learn:
the built-in data set, resized to whatever a model takes."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits as _sklearn_digits

from .dataset import Dataset, make_dataset

NATIVE_SHAPE = (1, 8, 8)


def load_digits(input_shape: tuple[int, int, int] = NATIVE_SHAPE, seed: int = 0) -> Dataset:
    """Digits as (N, C, H, W) float32 in [0, 1], resized bilinearly to (H, W) and repeated over
    C channels, split 60/20/20 (stratified, ``seed``) into train / calib / test."""
    channels, height, width = input_shape
    bunch = _sklearn_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]
    if (height, width) != images.shape[2:]:
        images = F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)
    images = images.clamp(0.0, 1.0).expand(-1, channels, -1, -1)
    return make_dataset("digits", images.numpy(), bunch.target, seed=seed)
