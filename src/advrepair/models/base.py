"""The classifier contract: images in [0, 1] -> logits, normalization inside, features reachable."""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from advrepair.errors import InputError
from advrepair.validation import check_int_at_least


def _channel_values(values: Any, what: str) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a sequence of numbers (one per channel), got {values!r}") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise InputError(f"{what} must hold one finite number per channel, got {values!r}")
    return out


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, kept inside the model so attacks see [0, 1] images."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_l, std_l = _channel_values(mean, "mean"), _channel_values(std, "std")
        if len(mean_l) != len(std_l):
            raise InputError(f"mean and std need the same number of channels, got {len(mean_l)} and {len(std_l)}")
        if any(s <= 0 for s in std_l):
            raise InputError(f"std must be > 0 in every channel, got {std_l}")
        self.register_buffer("mean", torch.tensor(mean_l, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std_l, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"images must be (B, {self.mean.shape[1]}, H, W) to match the normalization's "
                             f"{self.mean.shape[1]} channel(s), got {got}")
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """Base of our architectures.

    ``features(x)`` returns the penultimate representation (B, feature_dim) that the
    self-supervised heads read; ``forward(x) = head(features(x))`` returns logits.
    ``config`` holds the constructor arguments, enough to rebuild it from a card.
    """

    arch: str = "classifier"
    #: whether the architecture needs exactly ``input_size`` x ``input_size`` images (False for
    #: networks with global pooling, which take other sizes too: only the channels are checked)
    fixed_size: bool = True

    def __init__(self, *, in_channels: int, num_classes: int, input_size: int,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        in_channels = check_int_at_least(in_channels, "in_channels", 1)
        num_classes = check_int_at_least(num_classes, "num_classes", 1)
        input_size = check_int_at_least(input_size, "input_size", 1)
        if len(mean) != in_channels or len(std) != in_channels:
            raise InputError(f"mean/std need {in_channels} values (one per channel), got {len(mean)}/{len(std)}")
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

    def _check_input(self, x: torch.Tensor) -> None:
        """Raise InputError unless ``x`` is a float (B, in_channels, input_size, input_size) tensor
        (any H, W when not ``fixed_size``). Shapes and dtype only, no device sync."""
        c, side = self.in_channels, self.input_size
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != c or (
                self.fixed_size and tuple(x.shape[2:]) != (side, side)):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            want = f"(B, {c}, {side}, {side}) images ({c} channel(s), {side}x{side} pixels)" if self.fixed_size \
                else f"(B, {c}, H, W) images ({c} channel(s))"
            raise InputError(f"{type(self).__name__} takes {want}, got {got}")
        if not x.is_floating_point():
            raise InputError(f"{type(self).__name__} takes float images in [0, 1], got dtype {x.dtype}; "
                             "convert uint8 images with images.float() / 255")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.embed(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
