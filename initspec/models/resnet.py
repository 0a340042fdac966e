"""ResNets with torchvision's class and parameter names (``conv1``, ``bn1``,
``layer{1-4}.{i}.conv{1,2,3}``, ``...bn{1,2,3}``, ``...downsample.{0,1}``, ``fc``):
``BasicBlock`` (resnet18/34) and ``Bottleneck`` (resnet50/101/152), as in
``torchvision/models/resnet.py``."""
from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4); the residual block's last BN is bn3."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}
DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
          101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3))}


class ResNet(nn.Module):
    """torchvision-style ResNet: ``layers`` blocks per stage of ``block`` ("basic" or "bottleneck"), base ``width``."""

    def __init__(self, layers: tuple[int, ...] = (1, 1, 1, 1), num_classes: int = 10, width: int = 16,
                 in_channels: int = 3, block: str = "basic"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        planes, inplanes = width, width
        for stage, blocks in enumerate(layers, start=1):
            stride = 1 if stage == 1 else 2
            stage_blocks = []
            for i in range(blocks):
                stage_blocks.append(BLOCKS[block](inplanes, planes, stride if i == 0 else 1))
                inplanes = planes * BLOCKS[block].expansion
            setattr(self, f"layer{stage}", nn.Sequential(*stage_blocks))
            planes *= 2
        self.n_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in range(1, self.n_stages + 1):
            x = getattr(self, f"layer{stage}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet(depth: int, **overrides) -> ResNet:
    """torchvision's resnet18/34/50/101/152 layout (width 64, 1000 classes unless overridden)."""
    block, layers = DEPTHS[depth]
    config = dict(layers=layers, block=block, width=64, num_classes=1000)
    config.update(overrides)
    return ResNet(**config)
