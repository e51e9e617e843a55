"""PreAct-ResNet-18 (He et al. 2016, identity mappings) for 32x32 color images."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from advrepair.models.base import Classifier

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice with an identity (or 1x1 projection) shortcut; optional dropout
    between the convolutions (WideResNet's block)."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + skip


class PreActResNet18(Classifier):
    """Shapes: (B, C, 32, 32) -> logits (B, num_classes); features (B, 512)."""

    arch = "preact-resnet18"
    fixed_size = False  # global average pooling: any image size works

    def __init__(self, in_channels: int = 3, num_classes: int = 10, input_size: int = 32,
                 mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD) -> None:
        super().__init__(in_channels=in_channels, num_classes=num_classes, input_size=input_size,
                         mean=mean, std=std)
        self.stem = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        layers: list[nn.Module] = []
        in_planes = 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes, 1)]
            in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(512)
        self.feature_dim = 512
        self.head = nn.Linear(512, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.layers(self.stem(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)
