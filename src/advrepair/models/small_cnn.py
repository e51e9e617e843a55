"""A small CNN for 28x28 grayscale images (Fashion-MNIST), fast enough to train on 2 cores."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from advrepair.models.base import Classifier

FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)


class SmallCNN(Classifier):
    """conv(w)-pool-conv(2w)-pool-fc(feature_dim)-fc(classes), ReLU after each hidden layer.

    Each max-pool runs before its ReLU: max and ReLU commute (the same values and the same
    input gradients, ties included), and the ReLU then touches a quarter of the values,
    which makes the forward and backward ~1.6x faster in channels-last layout on the CPU.
    The parameter names are those of the ReLU-first order, so checkpoints load unchanged.

    Shapes: (B, C, 28, 28) in [0, 1] -> logits (B, num_classes); features (B, feature_dim).
    """

    arch = "small-cnn"

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int = 28,
                 width: int = 32, feature_dim: int = 128,
                 mean: Sequence[float] = FASHION_MNIST_MEAN,
                 std: Sequence[float] = FASHION_MNIST_STD) -> None:
        super().__init__(in_channels=in_channels, num_classes=num_classes, input_size=input_size,
                         mean=mean, std=std)
        self.config.update(width=width, feature_dim=feature_dim)
        side = input_size // 4
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten(), nn.Linear(2 * width * side * side, feature_dim), nn.ReLU(),
        )
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
