"""The classifier contract: images in [0, 1] -> logits, normalization inside, features reachable."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, kept inside the model so attacks see [0, 1] images."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """Base of our architectures.

    ``features(x)`` returns the penultimate representation (B, feature_dim) that the
    self-supervised heads read; ``forward(x) = head(features(x))`` returns logits.
    ``config`` holds the constructor arguments, enough to rebuild it from a card.
    """

    arch: str = "classifier"

    def __init__(self, *, in_channels: int, num_classes: int, input_size: int,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"mean/std need {in_channels} values, got {len(mean)}/{len(std)}")
        self.normalize = Normalize(mean, std)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.input_size = input_size
        self.config: dict[str, Any] = dict(in_channels=in_channels, num_classes=num_classes,
                                           input_size=input_size, mean=list(mean), std=list(std))
        self.feature_dim = 0
        self.head: nn.Module = nn.Identity()

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
