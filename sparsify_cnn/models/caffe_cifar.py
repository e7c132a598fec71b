"""CIFAR-10 seeds from Caffe: cifar10_quick (CQ), cifar10_full (AlexLRN), its batch-norm
variant (AlexBN) and Network in Network.

Layer names follow the prototxts. Caffe's pooling rounds output sizes up, so every pool uses
``ceil_mode=True`` (32 -> 16 -> 8 -> 4 for the 3/2 pools). Where a ceil-mode window runs past
the input edge, Caffe's AVE pool and PyTorch's ``avg_pool2d`` both divide by the number of
elements inside the input (there is no padding to count), so the outputs agree too.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ._shapes import caffe_pool_out, pair


class WithinChannelLRN(nn.Module):
    """Caffe's LRN with ``norm_region: WITHIN_CHANNEL``.

    ``x * (1 + alpha * mean_{size x size}(x^2)) ** -beta``. Caffe builds it from an AVE pool
    with pad ``size // 2``, and that pool divides by the full window, padding included, hence
    ``count_include_pad=True``. Caffe accepts odd sizes only, and so does this module.
    """

    def __init__(self, size: int = 3, alpha: float = 5e-5, beta: float = 0.75):
        super().__init__()
        if size < 1 or size % 2 == 0:
            raise ValueError(f"LRN size must be odd and positive, got {size}")
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_sq = F.avg_pool2d(
            x * x, self.size, stride=1, padding=self.size // 2, count_include_pad=True
        )
        return x * (1 + self.alpha * mean_sq) ** (-self.beta)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}"


def _pooled_3x(input_size) -> tuple[int, int]:
    """Spatial size after the three 'same' 5x5 convs and three 3/2 pools of the Caffe nets."""
    h, w = pair(input_size)
    for _ in range(3):
        h, w = caffe_pool_out(h, 3, 2), caffe_pool_out(w, 3, 2)
    return h, w


def _conv5(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 5, padding=2)


class CQ(nn.Sequential):
    """Caffe's ``examples/cifar10/cifar10_quick_train_test.prototxt``.

    conv1 32@5 -> maxpool 3/2 -> ReLU -> conv2 32@5 -> ReLU -> avgpool 3/2 -> conv3 64@5 ->
    ReLU -> avgpool 3/2 -> ip1 64 -> ip2. As in the prototxt there is no ReLU between ip1 and
    ip2, and conv1's ReLU follows its pool.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, input_size=32):
        h, w = _pooled_3x(input_size)
        super().__init__(
            OrderedDict(
                [
                    ("conv1", _conv5(in_channels, 32)),
                    ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)),
                    ("relu1", nn.ReLU()),
                    ("conv2", _conv5(32, 32)),
                    ("relu2", nn.ReLU()),
                    ("pool2", nn.AvgPool2d(3, 2, ceil_mode=True)),
                    ("conv3", _conv5(32, 64)),
                    ("relu3", nn.ReLU()),
                    ("pool3", nn.AvgPool2d(3, 2, ceil_mode=True)),
                    ("flatten", nn.Flatten(1)),
                    ("ip1", nn.Linear(64 * h * w, 64)),
                    ("ip2", nn.Linear(64, num_classes)),
                ]
            )
        )


class AlexLRN(nn.Sequential):
    """Caffe's ``examples/cifar10/cifar10_full_train_test.prototxt``.

    CQ's convs and pools with a within-channel LRN (size 3, alpha 5e-5, beta 0.75) after the
    first two pooling stages, and a single classifier layer ip1.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, input_size=32):
        h, w = _pooled_3x(input_size)
        super().__init__(
            OrderedDict(
                [
                    ("conv1", _conv5(in_channels, 32)),
                    ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)),
                    ("relu1", nn.ReLU()),
                    ("norm1", WithinChannelLRN(3, 5e-5, 0.75)),
                    ("conv2", _conv5(32, 32)),
                    ("relu2", nn.ReLU()),
                    ("pool2", nn.AvgPool2d(3, 2, ceil_mode=True)),
                    ("norm2", WithinChannelLRN(3, 5e-5, 0.75)),
                    ("conv3", _conv5(32, 64)),
                    ("relu3", nn.ReLU()),
                    ("pool3", nn.AvgPool2d(3, 2, ceil_mode=True)),
                    ("flatten", nn.Flatten(1)),
                    ("ip1", nn.Linear(64 * h * w, num_classes)),
                ]
            )
        )


class AlexBN(nn.Sequential):
    """Caffe's ``examples/cifar10/cifar10_full_sigmoid_train_test_bn.prototxt`` as the STAN
    seed describes it.

    Decision: ReLU replaces the sigmoid, and batch norm comes after the ReLU and the pool of
    each stage (the STAN seed's order; the prototxt normalises before the sigmoid). Convs keep
    their biases as in the prototxt.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, input_size=32):
        h, w = _pooled_3x(input_size)
        super().__init__(
            OrderedDict(
                [
                    ("conv1", _conv5(in_channels, 32)),
                    ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)),
                    ("relu1", nn.ReLU()),
                    ("bn1", nn.BatchNorm2d(32)),
                    ("conv2", _conv5(32, 32)),
                    ("relu2", nn.ReLU()),
                    ("pool2", nn.AvgPool2d(3, 2, ceil_mode=True)),
                    ("bn2", nn.BatchNorm2d(32)),
                    ("conv3", _conv5(32, 64)),
                    ("relu3", nn.ReLU()),
                    ("pool3", nn.AvgPool2d(3, 2, ceil_mode=True)),
                    ("bn3", nn.BatchNorm2d(64)),
                    ("flatten", nn.Flatten(1)),
                    ("ip1", nn.Linear(64 * h * w, num_classes)),
                ]
            )
        )


class NIN(nn.Sequential):
    """Network in Network for CIFAR-10 (Lin, Chen & Yan, ICLR 2014; their Caffe model).

    Three mlpconv blocks: 192@5, 160@1, 96@1 -> maxpool 3/2 -> dropout; 192@5, 192@1, 192@1
    -> avgpool 3/2 -> dropout; 192@3, 192@1, num_classes@1 -> global average pool. Every conv
    is followed by a ReLU, the class maps included, as in the original. The global pool is
    adaptive so that other input sizes work (the original pools 8x8 with a fixed kernel).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5):
        layers: list[tuple[str, nn.Module]] = []

        def conv(name: str, relu: str, cin: int, cout: int, k: int) -> None:
            layers.extend([(name, nn.Conv2d(cin, cout, k, padding=k // 2)), (relu, nn.ReLU())])

        conv("conv1", "relu1", in_channels, 192, 5)
        conv("cccp1", "relu_cccp1", 192, 160, 1)
        conv("cccp2", "relu_cccp2", 160, 96, 1)
        layers += [("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)), ("drop1", nn.Dropout(dropout))]
        conv("conv2", "relu2", 96, 192, 5)
        conv("cccp3", "relu_cccp3", 192, 192, 1)
        conv("cccp4", "relu_cccp4", 192, 192, 1)
        layers += [("pool2", nn.AvgPool2d(3, 2, ceil_mode=True)), ("drop2", nn.Dropout(dropout))]
        conv("conv3", "relu3", 192, 192, 3)
        conv("cccp5", "relu_cccp5", 192, 192, 1)
        conv("cccp6", "relu_cccp6", 192, num_classes, 1)
        layers += [("pool3", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten(1))]
        super().__init__(OrderedDict(layers))


def cq(num_classes: int = 10, in_channels: int = 3, **options) -> nn.Module:
    return CQ(num_classes, in_channels, **options)


def alexlrn(num_classes: int = 10, in_channels: int = 3, **options) -> nn.Module:
    return AlexLRN(num_classes, in_channels, **options)


def alexbn(num_classes: int = 10, in_channels: int = 3, **options) -> nn.Module:
    return AlexBN(num_classes, in_channels, **options)


def nin(num_classes: int = 10, in_channels: int = 3, **options) -> nn.Module:
    return NIN(num_classes, in_channels, **options)
