"""SimCLR-style augmentations with explicit random numbers, differentiable in the image.

Every random choice is read from a uniform tensor ``u`` of shape (B, N_AUG_NUMBERS) that
the caller draws (per image, seeded: see ``advrepair.seeding``), so an augmented view is a
deterministic, differentiable function of ``(image, u)``. That is what lets a reverse
attack take gradients through its views and still be independent of batch-mates.

Following mao2021 (Sec. 3.2): random resized crop, then color distortion (brightness,
contrast, and for color images saturation, hue and random grayscale); no Gaussian blur,
which the paper found to favor oversmooth repairs. Deviation: the jitter operations run
in a fixed order (SimCLR shuffles it).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import kornia
import torch
import torch.nn.functional as F

from advrepair.errors import InputError
from advrepair.validation import check_images

#: uniforms one augmented view consumes per image
N_AUG_NUMBERS = 10


@dataclass(frozen=True)
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.3, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = False
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2

    def __post_init__(self) -> None:
        def pair(name: str) -> tuple[float, float]:
            value = getattr(self, name)
            try:
                lo, hi = (float(v) for v in value)
            except (TypeError, ValueError):
                raise InputError(f"AugmentConfig.{name} must be a pair (lo, hi), got {value!r}") from None
            return lo, hi

        lo, hi = pair("crop_scale")
        if not 0 < lo <= hi <= 1:
            raise InputError(f"AugmentConfig.crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale!r}")
        lo, hi = pair("crop_ratio")
        if not 0 < lo <= hi < math.inf:
            raise InputError(f"AugmentConfig.crop_ratio must satisfy 0 < lo <= hi, got {self.crop_ratio!r}")
        for name, top in (("jitter_p", 1.0), ("grayscale_p", 1.0), ("brightness", 1.0), ("contrast", 1.0),
                          ("saturation", 1.0), ("hue", 0.5)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= top:
                raise InputError(f"AugmentConfig.{name} must lie in [0, {top:g}], got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AugmentConfig":
        d = dict(d)
        for k in ("crop_scale", "crop_ratio"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def _check_augment_args(images: torch.Tensor, u: torch.Tensor, cfg: AugmentConfig, u_shape: str,
                        per_image: tuple[int, ...] | None = None) -> None:
    check_images(images)
    if images.shape[1] not in (1, 3):
        raise InputError(f"augmentations take gray (1 channel) or RGB (3 channel) images, got shape "
                         f"{tuple(images.shape)}")
    if not isinstance(u, torch.Tensor) or (per_image is not None and tuple(u.shape) != (images.shape[0], *per_image)) \
            or (per_image is None and (u.dim() != 3 or u.shape[0] != images.shape[0] or u.shape[2] != N_AUG_NUMBERS)):
        got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise InputError(f"u must have shape {u_shape} for {images.shape[0]} images, got {got}")
    if not isinstance(cfg, AugmentConfig):
        raise InputError(f"cfg must be an AugmentConfig, got {type(cfg).__name__}")


def augment(images: torch.Tensor, u: torch.Tensor, cfg: AugmentConfig = AugmentConfig()) -> torch.Tensor:
    """One augmented view per image.

    Args:
        images: (B, C, H, W) in [0, 1]; C is 1 (gray) or 3 (RGB).
        u: (B, N_AUG_NUMBERS) uniform numbers in [0, 1).
    Returns:
        (B, C, H, W) in [0, 1], differentiable with respect to ``images``.

    Raises:
        InputError: images that are not (B, 1 or 3, H, W) in [0, 1], or ``u`` of another shape.
    """
    _check_augment_args(images, u, cfg, f"(B, {N_AUG_NUMBERS})", (N_AUG_NUMBERS,))
    return _augment(images, u, cfg)


def _augment(images: torch.Tensor, u: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """:func:`augment` without the argument checks (for callers that checked already)."""
    b, c, h, w = images.shape
    u = u.to(images.device, images.dtype)
    # random resized crop as an affine resampling of the image
    lo, hi = cfg.crop_scale
    area = lo + u[:, 0] * (hi - lo)
    log_r = math.log(cfg.crop_ratio[0]) + u[:, 1] * (math.log(cfg.crop_ratio[1]) - math.log(cfg.crop_ratio[0]))
    ratio = torch.exp(log_r)
    cw = torch.sqrt(area * ratio).clamp(max=1.0)
    ch = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = cw / 2 + u[:, 2] * (1 - cw)
    cy = ch / 2 + u[:, 3] * (1 - ch)
    sx = torch.where(u[:, 4] < 0.5, -cw, cw) if cfg.flip else cw
    zero = torch.zeros_like(cw)
    theta = torch.stack([torch.stack([sx, zero, 2 * cx - 1], 1), torch.stack([zero, ch, 2 * cy - 1], 1)], 1)
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    x = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    # color distortion, applied with probability jitter_p
    jitter = (u[:, 5] < cfg.jitter_p).view(b, 1, 1, 1)
    y = x * (1 + cfg.brightness * (2 * u[:, 6] - 1)).view(b, 1, 1, 1)
    gray = y.mean(1, keepdim=True) if c == 1 else kornia.color.rgb_to_grayscale(y)
    mean = gray.mean((1, 2, 3), keepdim=True)
    y = (y - mean) * (1 + cfg.contrast * (2 * u[:, 7] - 1)).view(b, 1, 1, 1) + mean
    if c == 3:
        gray = kornia.color.rgb_to_grayscale(y)
        y = gray + (y - gray) * (1 + cfg.saturation * (2 * u[:, 8] - 1)).view(b, 1, 1, 1)
        y = kornia.enhance.adjust_hue(y.clamp(0, 1), cfg.hue * (2 * u[:, 9] - 1) * math.pi)
    x = torch.where(jitter, y.clamp(0, 1), x)
    if c == 3:
        to_gray = (u[:, 9] < cfg.grayscale_p).view(b, 1, 1, 1)
        x = torch.where(to_gray, kornia.color.rgb_to_grayscale(x).expand(-1, 3, -1, -1), x)
    return x.clamp(0, 1)


def augment_views(images: torch.Tensor, u: torch.Tensor, cfg: AugmentConfig = AugmentConfig()) -> torch.Tensor:
    """``n`` views of every image in one batched call.

    Args:
        images: (B, C, H, W); u: (B, n, N_AUG_NUMBERS).
    Returns:
        (B * n, C, H, W), views of image ``i`` at rows ``i*n .. i*n + n - 1``.

    Raises:
        InputError: as :func:`augment`, with ``u`` of shape (B, n, N_AUG_NUMBERS).
    """
    _check_augment_args(images, u, cfg, f"(B, n, {N_AUG_NUMBERS})")
    return _augment_views(images, u, cfg)


def _augment_views(images: torch.Tensor, u: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """:func:`augment_views` without the argument checks (for callers that checked already)."""
    b, n = u.shape[:2]
    rep = images.unsqueeze(1).expand(b, n, *images.shape[1:]).reshape(b * n, *images.shape[1:])
    return _augment(rep, u.reshape(b * n, -1), cfg)
