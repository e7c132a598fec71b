"""MNIST seeds: Caffe's LeNet and the one-hidden-layer MLP of meProp / STAN.

Layer names follow the Caffe prototxt (``conv1``, ``pool1``, ``ip1`` ...) so reports read like
the papers.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from torch import nn

from ._shapes import caffe_pool_out, conv_out, pair


class LeNet(nn.Sequential):
    """Caffe's MNIST LeNet (``examples/mnist/lenet_train_test.prototxt``).

    conv1 20@5x5 -> maxpool 2/2 -> conv2 50@5x5 -> maxpool 2/2 -> ip1 500 -> ReLU -> ip2.

    Decision: ``conv_relu=True`` (the default) adds a ReLU after each conv, which the prototxt
    does not have; the zero-prediction technique needs conv+ReLU pairs. ``conv_relu=False`` is
    the exact Caffe network. Pooling rounds up as Caffe's does (``ceil_mode``); at 28x28 this
    changes nothing. The ReLU goes before the max pool; the two commute, so the function is
    the same as pooling first.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        conv_relu: bool = True,
        input_size: int | tuple[int, int] = 28,
    ):
        h, w = pair(input_size)
        for _ in range(2):
            h, w = conv_out(h, 5), conv_out(w, 5)
            h, w = caffe_pool_out(h, 2, 2), caffe_pool_out(w, 2, 2)
        layers: list[tuple[str, nn.Module]] = [("conv1", nn.Conv2d(in_channels, 20, 5))]
        if conv_relu:
            layers.append(("relu_conv1", nn.ReLU()))
        layers += [("pool1", nn.MaxPool2d(2, 2, ceil_mode=True)), ("conv2", nn.Conv2d(20, 50, 5))]
        if conv_relu:
            layers.append(("relu_conv2", nn.ReLU()))
        layers += [
            ("pool2", nn.MaxPool2d(2, 2, ceil_mode=True)),
            ("flatten", nn.Flatten(1)),
            ("ip1", nn.Linear(50 * h * w, 500)),
            ("relu1", nn.ReLU()),
            ("ip2", nn.Linear(500, num_classes)),
        ]
        super().__init__(OrderedDict(layers))


class MLP(nn.Sequential):
    """The one-hidden-layer MLP of the meProp and STAN seeds.

    flatten -> Linear(C*H*W, hidden) -> ReLU -> Dropout -> Linear(hidden, num_classes).
    The dropout module is always present (p=0 by default) so the graph has the same nodes
    whatever ``dropout`` is.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        hidden: int = 500,
        dropout: float = 0.0,
        input_size: int | tuple[int, int] = 28,
    ):
        super().__init__(
            OrderedDict(
                [
                    ("flatten", nn.Flatten(1)),
                    ("fc1", nn.Linear(in_channels * math.prod(pair(input_size)), hidden)),
                    ("relu1", nn.ReLU()),
                    ("drop1", nn.Dropout(dropout)),
                    ("fc2", nn.Linear(hidden, num_classes)),
                ]
            )
        )


def lenet(num_classes: int = 10, in_channels: int = 1, **options) -> nn.Module:
    return LeNet(num_classes, in_channels, **options)


def lenet_caffe(num_classes: int = 10, in_channels: int = 1, **options) -> nn.Module:
    return LeNet(num_classes, in_channels, conv_relu=False, **options)


def mlp(num_classes: int = 10, in_channels: int = 1, **options) -> nn.Module:
    return MLP(num_classes, in_channels, **options)
