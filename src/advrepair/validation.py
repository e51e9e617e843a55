"""Checks at the public boundary: images are float NCHW in [0, 1], labels are class indices."""
from __future__ import annotations

from typing import Any

import torch

from advrepair.errors import InputError


def check_images(images: object, name: str = "images") -> torch.Tensor:
    """Return ``images`` unchanged if it is a float NCHW tensor in [0, 1] without NaN.

    Raises:
        InputError: naming what is wrong (type, dtype, shape, NaN/inf, range).
    """
    if not isinstance(images, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise InputError(
            f"{name} must be a floating-point tensor in [0, 1], got dtype {images.dtype}; "
            "convert uint8 images with images.float() / 255"
        )
    if images.dim() != 4:
        raise InputError(f"{name} must be NCHW (4 dimensions), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise InputError(f"{name} is an empty batch")
    values = images.detach()
    if not torch.isfinite(values).all():
        raise InputError(f"{name} contains NaN or infinite values")
    lo, hi = float(values.min()), float(values.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(
            f"{name} must lie in [0, 1], found values in [{lo:.4g}, {hi:.4g}]; "
            "normalization belongs inside the model, not in the images"
        )
    return images


def check_labels(labels: object, batch_size: int, num_classes: int | None = None) -> torch.Tensor:
    """Return ``labels`` if it is an integer vector of class indices matching the batch."""
    if not isinstance(labels, torch.Tensor):
        raise InputError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise InputError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != batch_size:
        raise InputError(
            f"labels must have shape ({batch_size},) to match the images, got {tuple(labels.shape)}"
        )
    if labels.numel() and int(labels.min()) < 0:
        raise InputError(f"labels must be >= 0, found {int(labels.min())}")
    if num_classes is not None and labels.numel() and int(labels.max()) >= num_classes:
        raise InputError(
            f"labels must be < {num_classes} (the model's number of classes), found {int(labels.max())}"
        )
    return labels


def check_positive(value: float, name: str, allow_zero: bool = False) -> float:
    """Reject negative (or zero) budgets, step sizes and counts with a clear message."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InputError(f"{name} must be a number, got {type(value).__name__}")
    if value != value:  # NaN
        raise InputError(f"{name} must be a number, got NaN")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InputError(f"{name} must be {bound}, got {value}")
    return float(value)


def check_int_at_least(value: Any, name: str, low: int) -> int:
    """``value`` as an int if it is an integral number >= ``low``, else a clear InputError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < low:
        raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_fraction(value: Any, name: str) -> float:
    """``value`` as a float if it is a number in (0, 1] (a probability, a share), else a clear InputError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise InputError(f"{name} must lie in (0, 1], got {value!r}")
    return float(value)


def check_seed(seed: Any, name: str = "seed") -> int | None:
    """``seed`` if it is None (truly random) or an integer >= 0, else a clear InputError."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise InputError(f"{name} must be an integer >= 0 or None, got {seed!r}")
    return seed


def looks_like_probabilities(out: torch.Tensor) -> bool:
    """Whether a (B, classes) output has rows in [0, 1] summing to 1: a softmax where logits belong."""
    rows = out.detach().float()
    return bool((rows >= 0).all() and (rows <= 1).all()) and torch.allclose(
        rows.sum(1), torch.ones(rows.shape[0], device=rows.device), atol=1e-3)
