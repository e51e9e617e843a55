"""WideResNet-28-10 (Zagoruyko & Komodakis 2016) for 32x32 color images."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from advrepair.errors import InputError
from advrepair.models.base import Classifier
from advrepair.models.preact_resnet import CIFAR10_MEAN, CIFAR10_STD, PreActBlock


class WideResNet(Classifier):
    """WRN-depth-widen; shapes (B, C, 32, 32) -> logits; features (B, 64 * widen)."""

    arch = "wide-resnet"
    fixed_size = False  # global average pooling: any image size works

    def __init__(self, in_channels: int = 3, num_classes: int = 10, input_size: int = 32,
                 depth: int = 28, widen: int = 10, dropout: float = 0.0,
                 mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD) -> None:
        super().__init__(in_channels=in_channels, num_classes=num_classes, input_size=input_size,
                         mean=mean, std=std)
        if (depth - 4) % 6:
            raise InputError(f"WideResNet depth must be 6n + 4, got {depth}")
        self.config.update(depth=depth, widen=widen, dropout=dropout)
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        in_planes = widths[0]
        for group, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                blocks.append(PreActBlock(in_planes, group, stride if i == 0 else 1, dropout))
                in_planes = group
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.feature_dim = in_planes
        self.head = nn.Linear(in_planes, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.blocks(self.stem(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


def wrn_28_10(**kwargs: Any) -> WideResNet:
    return WideResNet(depth=28, widen=10, **kwargs)
