"""VGG-16/19 for CIFAR as the pruning papers use it (GraSP, Wang et al. ICLR 2020,
``models/base/vgg.py``): 3x3 convs, each with batch norm and ReLU, and one linear classifier
on 512 features.

Decisions: GraSP's configs end with the last conv stage and reduce its 2x2 map with a 2x2
average pool, and so does this module (a config ending in a 2x2 max pool, as some CIFAR VGGs
do, has the same weights and MACs). Convs have no bias when batch norm follows, as in GraSP;
with ``batch_norm=False`` they get one, where GraSP would leave the network with no shift
at all. Weights start as GraSP initialises them.
"""

from __future__ import annotations

from torch import nn

from ._shapes import pair

CONFIGS: dict[int, list[int | str]] = {
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
         512, 512, 512, 512, "M", 512, 512, 512, 512],
}  # fmt: skip


class VGG(nn.Module):
    def __init__(
        self,
        depth: int = 16,
        num_classes: int = 10,
        in_channels: int = 3,
        batch_norm: bool = True,
        input_size: int | tuple[int, int] = 32,
    ):
        super().__init__()
        cfg = CONFIGS[depth]
        layers: list[nn.Module] = []
        channels = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers.append(nn.Conv2d(channels, v, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU())
            channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AvgPool2d(2)
        self.flatten = nn.Flatten(1)
        h, w = pair(input_size)
        # 4 max pools and the final average pool: the map shrinks 32-fold.
        self.classifier = nn.Linear(channels * (h // 32) * (w // 32), num_classes)
        self.apply(init_weights)

    def forward(self, x):
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


def init_weights(m: nn.Module) -> None:
    """GraSP's ``weights_init``: He (fan-out) convs, N(0, 0.01) linear, BN at identity."""
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, 0, 0.01)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def vgg16(num_classes: int = 10, in_channels: int = 3, **options) -> nn.Module:
    return VGG(16, num_classes, in_channels, **options)


def vgg19(num_classes: int = 10, in_channels: int = 3, **options) -> nn.Module:
    return VGG(19, num_classes, in_channels, **options)
