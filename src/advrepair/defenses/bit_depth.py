"""Bit-depth reduction defense (Xu, Evans & Qi 2018, "Feature Squeezing: Detecting Adversarial
Examples in Deep Neural Networks", Sec. 3.1, color-depth reduction).

    x' = round(x * (2^bits - 1)) / (2^bits - 1)

Its derivative is 0 almost everywhere (gradient masking). ``straight_through=True`` keeps
the same forward values but differentiates as the identity (BPDA, Athalye et al. 2018), so
``nn.Sequential(BitDepthReduction(bits, straight_through=True), classifier)`` is directly
attackable. No deviation from the paper (Xu et al. round half up in NumPy; torch rounds
half to even, which only matters for inputs exactly halfway between levels).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from advrepair.errors import InputError
from advrepair.validation import check_images
from advrepair.defenses.registry import register_defense


@register_defense("bit-depth", bits=4)
class BitDepthReduction(nn.Module):
    """Quantize each pixel to ``bits`` bits (``2^bits`` levels in [0, 1]).

    Args:
        bits: integer in [1, 16].
        straight_through: forward value unchanged, gradient of the identity.

    Shapes: (B, C, H, W) in [0, 1] -> same shape and dtype, in [0, 1].

    Example:
        >>> BitDepthReduction(1)(torch.tensor([[[[0.2, 0.7]]]]))
        tensor([[[[0., 1.]]]])
    """

    def __init__(self, bits: int = 4, straight_through: bool = False) -> None:
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
            raise InputError(f"bits must be an integer in [1, 16], got {bits!r}")
        self.bits = bits
        self.straight_through = bool(straight_through)

    def params(self) -> dict[str, Any]:
        """Name and parameters, as recorded in results.json."""
        return {"name": "bit-depth", "bits": self.bits, "straight_through": self.straight_through}

    def bpda_surrogate(self) -> nn.Module:
        """The identity, whose gradient BPDA uses for this defense."""
        return nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        levels = float(2 ** self.bits - 1)
        quantized = torch.round(images * levels) / levels
        if self.straight_through:
            return quantized.detach() + (images - images.detach())
        return quantized
