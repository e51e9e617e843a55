"""Median filtering defense (Xu, Evans & Qi 2018, "Feature Squeezing: Detecting Adversarial
Examples in Deep Neural Networks", Sec. 3.2, local median smoothing).

Each pixel of each channel is replaced by the median of the k x k window around it.

Deviations, on purpose:
- Only odd k (a centred window); Xu et al. also use 2x2 windows, whose median is not
  centred.
- Borders are reflected without repeating the edge pixel (torch's "reflect", SciPy's
  "mirror"); the paper does not specify the border. SciPy's ``median_filter`` default
  ("reflect" in SciPy) repeats the edge pixel. Images must be larger than k // 2 pixels in
  each dimension.

The forward is differentiable almost everywhere (the derivative routes to the median pixel
of each window); BPDA with the identity is the usual attack.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from advrepair.errors import InputError
from advrepair.validation import check_images
from advrepair.defenses.registry import register_defense


def median_filter(images: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """k x k median per channel with reflect padding: (B, C, H, W) -> (B, C, H, W).

    Example:
        >>> median_filter(torch.rand(2, 3, 8, 8), 3).shape
        torch.Size([2, 3, 8, 8])
    """
    if kernel_size == 1:
        return images
    r = kernel_size // 2
    b, c, h, w = images.shape
    if r >= h or r >= w:
        raise InputError(f"kernel_size {kernel_size} needs images larger than {r} pixels in each "
                         f"dimension for reflect padding, got {h}x{w}")
    padded = F.pad(images, (r, r, r, r), mode="reflect")
    windows = padded.unfold(2, kernel_size, 1).unfold(3, kernel_size, 1)
    return windows.reshape(b, c, h, w, kernel_size * kernel_size).median(dim=-1).values


@register_defense("median", kernel_size=3)
class MedianFilter(nn.Module):
    """Median-smoothing defense (Xu et al. 2018, feature squeezing).

    Args:
        kernel_size: odd window side k >= 1 (1 is the identity).

    Shapes: (B, C, H, W) in [0, 1] -> same shape and dtype, in [0, 1].

    Example:
        >>> defended = nn.Sequential(MedianFilter(3), classifier)
    """

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 \
                or kernel_size % 2 == 0:
            raise InputError(f"kernel_size must be an odd integer >= 1 (a centred window), got {kernel_size!r}")
        self.kernel_size = kernel_size

    def params(self) -> dict[str, Any]:
        """Name and parameters, as recorded in results.json."""
        return {"name": "median", "kernel_size": self.kernel_size}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        return median_filter(images, self.kernel_size)
