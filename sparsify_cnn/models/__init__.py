"""The seed model zoo: the networks of the papers this tool reproduces, by name.

Every model traces with plain ``torch.fx.symbolic_trace`` and names its layers. Factories take
``num_classes`` and ``in_channels`` (plus model-specific options) and leave seeding to callers.
Example::

    model = build("zoo:lenet")           # 10 classes, 1x28x28 input
    model = build("resnet18", num_classes=1000)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import ModelLoadError, first_line
from .alexnet import alexnet
from .caffe_cifar import alexbn, alexlrn, cq, nin
from .lenet import lenet, lenet_caffe, mlp
from .resnet import resnet18, resnet32, resnet34, resnet50
from .vgg import vgg16, vgg19

PREFIX = "zoo:"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    factory: Callable[..., nn.Module]
    input_shape: tuple[int, int, int]  # default (C, H, W)
    description: str
    source: str
    sized: bool = False  # the factory takes ``input_size``: its classifier width depends on it


_CAFFE_CIFAR = "Caffe examples/cifar10/"
_ENTRIES = [
    ZooEntry("lenet", lenet, (1, 28, 28), "Caffe's MNIST LeNet, ReLU after each conv",
             "Caffe examples/mnist/lenet_train_test.prototxt (+ conv ReLUs)", sized=True),
    ZooEntry("lenet_caffe", lenet_caffe, (1, 28, 28), "Caffe's MNIST LeNet exactly (no conv ReLUs)",
             "Caffe examples/mnist/lenet_train_test.prototxt", sized=True),
    ZooEntry("mlp", mlp, (1, 28, 28), "one-hidden-layer MLP, 500 ReLU units",
             "the meProp / STAN seeds' MNIST MLP", sized=True),
    ZooEntry("cq", cq, (3, 32, 32), "Caffe's CIFAR-10 quick net (3 conv 5x5, 2 linear)",
             _CAFFE_CIFAR + "cifar10_quick_train_test.prototxt", sized=True),
    ZooEntry("alexlrn", alexlrn, (3, 32, 32), "Caffe's CIFAR-10 full net, within-channel LRN",
             _CAFFE_CIFAR + "cifar10_full_train_test.prototxt", sized=True),
    ZooEntry("alexbn", alexbn, (3, 32, 32), "CIFAR-10 full net with ReLU and batch norm",
             _CAFFE_CIFAR + "cifar10_full_sigmoid_train_test_bn.prototxt, as the STAN seed", sized=True),
    ZooEntry("nin", nin, (3, 32, 32), "Network in Network for CIFAR-10",
             "Lin, Chen & Yan, Network In Network, ICLR 2014"),
    ZooEntry("alexnet", alexnet, (3, 224, 224), "AlexNet, torchvision's one-GPU variant",
             "Krizhevsky et al., NIPS 2012; torchvision.models.alexnet"),
    ZooEntry("vgg16", vgg16, (3, 32, 32), "VGG-16 with batch norm for CIFAR",
             "GraSP (Wang et al., ICLR 2020) models/base/vgg.py", sized=True),
    ZooEntry("vgg19", vgg19, (3, 32, 32), "VGG-19 with batch norm for CIFAR",
             "GraSP (Wang et al., ICLR 2020) models/base/vgg.py", sized=True),
    ZooEntry("resnet18", resnet18, (3, 224, 224), "ImageNet ResNet-18",
             "He et al., CVPR 2016; torchvision.models.resnet18"),
    ZooEntry("resnet34", resnet34, (3, 224, 224), "ImageNet ResNet-34",
             "He et al., CVPR 2016; torchvision.models.resnet34"),
    ZooEntry("resnet50", resnet50, (3, 224, 224), "ImageNet ResNet-50 (stride on the 3x3 conv)",
             "He et al., CVPR 2016; torchvision.models.resnet50 (v1.5)"),
    ZooEntry("resnet32", resnet32, (3, 32, 32), "CIFAR ResNet-32 at doubled widths 32/64/128",
             "GraSP (Wang et al., ICLR 2020) models/base/resnet.py"),
]  # fmt: skip

ZOO: dict[str, ZooEntry] = {entry.name: entry for entry in _ENTRIES}


def zoo_names() -> list[str]:
    return list(ZOO)


def get_entry(name: str) -> ZooEntry:
    """The entry for ``name`` (``lenet`` or ``zoo:lenet``)."""
    key = name[len(PREFIX):] if name.startswith(PREFIX) else name
    try:
        return ZOO[key]
    except KeyError:
        raise ModelLoadError(
            f"unknown zoo model '{key}'; choose one of: {', '.join(ZOO)}"
        ) from None


def build(name: str, num_classes: int = 10, in_channels: int | None = None, **options) -> nn.Module:
    """A fresh model from the zoo; ``in_channels=None`` takes the entry's default."""
    entry = get_entry(name)
    if in_channels is None:
        in_channels = entry.input_shape[0]
    try:
        return entry.factory(num_classes=num_classes, in_channels=in_channels, **options)
    except (RuntimeError, ValueError) as error:  # e.g. an input too small for its layers: a negative width
        size = options.get("input_size")
        shape = f"{in_channels} x {size[0]} x {size[1]}" if isinstance(size, tuple | list) and len(size) == 2 else f"{in_channels} channels"
        raise ModelLoadError(f"{name} cannot be built for input {shape}: {first_line(error)}") from error


__all__ = ["PREFIX", "ZOO", "ZooEntry", "build", "get_entry", "zoo_names"]
