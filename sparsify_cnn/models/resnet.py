"""ResNets: ImageNet ResNet-18/34/50 (He et al. 2016, torchvision's structure) and the CIFAR
ResNet-32 with doubled widths of the GraSP / SSC seeds.

Parameter and buffer names match torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0``, ``fc``), so its state dicts load. Decisions:

- Each ReLU use is its own module (``relu1``, ``relu2`` ... in a block) where torchvision reuses
  one: passes that pair a conv with the ReLU after it can then rewrite one pair alone. ReLUs
  hold no weights, so state dicts are unaffected.
- No in-place ReLU or addition: a pass that hooks a conv's output must not see it overwritten.
- ResNet-50 puts the stride on the 3x3 conv (torchvision's "v1.5").
"""

from __future__ import annotations

from torch import nn


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


def shortcut(cin: int, cout: int, stride: int) -> nn.Module | None:
    """A 1x1 conv + BN projection where the shape changes (option B), else the identity."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = shortcut(cin, planes, stride)
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = conv1x1(planes, planes * 4)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = shortcut(cin, planes * 4, stride)
        self.relu3 = nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu3(out + identity)


def _stage(block, cin: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [block(cin, planes, stride)]
    layers += [block(planes * block.expansion, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """ImageNet ResNet: 7x7/2 stem, 3x3/2 max pool, four stages (stride 2 from the second),
    global average pool, linear classifier. Convs start He (fan-out) initialised as in
    torchvision."""

    def __init__(self, block, layers: list[int], num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        cin = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stage = _stage(block, cin, planes, blocks, 1 if i == 0 else 2)
            setattr(self, f"layer{i + 1}", stage)
            cin = planes * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(cin, num_classes)
        _he_init(self)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


class CifarResNet(nn.Module):
    """CIFAR ResNet-(6n+2) of GraSP's ``models/base/resnet.py``: a 3x3 stem and three stages
    of n BasicBlocks at widths 32/64/128 (twice He et al.'s 16/32/64), stride 2 at stages 2
    and 3, 1x1 conv + BN shortcuts where the shape changes (option B, as GraSP), global
    average pool and one linear layer. Decision: option B keeps the graph plain and
    traceable where option A's zero-padded shortcut would need a lambda."""

    def __init__(
        self,
        depth: int = 32,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple[int, int, int] = (32, 64, 128),
    ):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = conv3x3(in_channels, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.layer1 = _stage(BasicBlock, widths[0], widths[0], n, 1)
        self.layer2 = _stage(BasicBlock, widths[0], widths[1], n, 2)
        self.layer3 = _stage(BasicBlock, widths[1], widths[2], n, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(widths[2], num_classes)
        _he_init(self, linear_std=0.01)  # GraSP's weights_init

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


def _he_init(model: nn.Module, linear_std: float | None = None) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0, linear_std)
            nn.init.zeros_(m.bias)


def resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels)


def resnet34(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, in_channels)


def resnet50(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels)


def resnet32(num_classes: int = 10, in_channels: int = 3, **options) -> nn.Module:
    return CifarResNet(32, num_classes, in_channels, **options)
