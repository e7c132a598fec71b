"""A labelled data set at 224x224 with enough images for a ResNet-50 search on 512 calibration
images: scikit-learn's 1,797 digits, each also shifted by one of its 8 pixels in a seeded
direction, resized bilinearly to 3x224x224 and saved as an .npz (x float32 in [0, 1], y labels).
The splits are 60/20/20, so ``--images 2560`` gives 1,536 to train on and 512 to calibrate on.

No ImageNet and no pretrained weights are reachable offline; a ResNet-50 trained on this
(``sparsify train zoo:resnet50``) is the trained network at 224x224 that
``search_resnet50.py --model`` can search, its activations shaped by training, not by chance:

    python benchmarks/digits_at_224.py --images 2560 --out /tmp/digits224.npz
    sparsify train zoo:resnet50 --data /tmp/digits224.npz --epochs 2 --lr 0.02 --out /tmp/r50-digits.pt2
    python benchmarks/search_resnet50.py --model /tmp/r50-digits.pt2 --data /tmp/digits224.npz --images 512
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

SIZE = 224
SHIFTS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``image`` moved by (dy, dx) pixels, zeros coming in at the edge."""
    out = np.zeros_like(image)
    h, w = image.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[max(-dy, 0) : h - max(dy, 0),
                                                                           max(-dx, 0) : w - max(dx, 0)]  # fmt: skip
    return out


def digits_at_224(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images (N, 3, 224, 224) in [0, 1] and their labels: the digits first, then
    shifted copies of them, each copy's shift drawn from ``seed``."""
    digits = load_digits()
    images, labels = digits.images / 16.0, digits.target
    rng = np.random.default_rng(seed)
    small, y = [], []
    for i in range(count):
        image = images[i % len(images)]
        if i >= len(images):
            image = shifted(image, *SHIFTS[int(rng.integers(len(SHIFTS)))])
        small.append(image)
        y.append(labels[i % len(images)])
    x = torch.from_numpy(np.stack(small).astype(np.float32))[:, None]
    out = np.empty((count, 3, SIZE, SIZE), dtype=np.float32)
    for start in range(0, count, 256):  # resized in pieces: the whole set is 600 KB an image
        big = F.interpolate(x[start : start + 256], size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        out[start : start + 256] = big.clamp(0, 1).expand(-1, 3, -1, -1).numpy()
    return out, np.asarray(y, dtype=np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2560)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    x, y = digits_at_224(args.images, args.seed)
    np.savez(args.out, x=x, y=y)
    print(f"{args.out}: {len(x)} images {x.shape[1:]}, {len(np.unique(y))} classes")


if __name__ == "__main__":
    main()
