"""JPEG compression as an input-transformation defense, exact and differentiable.

Sources:
- Dziugaite, Ghahramani & Roy 2016 ("A study of the effect of JPG compression on
  adversarial images") and Guo, Rana, Cisse & van der Maaten 2018 ("Countering adversarial
  images using input transformations") use a JPEG round trip as a defense.
- Shin & Song 2017 ("JPEG-resistant adversarial images") approximate the rounding of the
  quantized DCT coefficients by ``round(x) + (x - round(x))^3`` so an attacker can
  differentiate through JPEG.
- The codec itself is ITU-T T.81 / JFIF (baseline): RGB -> YCbCr (JFIF Eq.), optional 4:2:0
  chroma subsampling, level shift by 128, 8x8 DCT-II, quantization by the Annex K tables
  scaled by quality as libjpeg's ``jpeg_quality_scaling`` does
  (``scale = 5000 / q`` for q < 50, else ``200 - 2q``; ``Q = clamp((T * scale + 50) // 100, 1, 255)``).

Two modes:
- ``JPEGCompression(quality)``: the real codec (Pillow / libjpeg), one image at a time, through
  an 8-bit round trip. Not differentiable (the output carries no graph); attack it with
  ``BPDA(defense, defense.bpda_surrogate())``.
- ``DifferentiableJPEG(quality)`` (also ``JPEGCompression(quality, differentiable=True)``):
  the same pipeline written in torch.

Deviations of the differentiable approximation from libjpeg, on purpose:
- libjpeg's integer ("islow") DCT and fixed-point color conversion are replaced by exact
  floating-point transforms.
- Coefficient rounding is ``rounding="cubic"`` (Shin & Song: ``round(x) + (x - round(x))^3``,
  value off by at most 1/8 of a quantization step) or ``rounding="straight-through"`` (the
  exact ``round`` in the forward pass, identity derivative). Every *pixel-level* rounding of
  the codec (8-bit input, YCbCr samples, chroma averages, decoded samples, 8-bit output) is
  straight-through in both modes: its value is exact and its derivative is the identity.
  (The cubic surrogate there would give a zero gradient at every 8-bit input value.)
- libjpeg's alternating rounding bias in chroma averaging and upsampling is replaced by
  round-half-to-even; "fancy" upsampling is bilinear x2 with edge replication, which is the
  same triangle filter.

Measured against Pillow 13 / libjpeg-turbo (tests/test_baselines.py): with
``rounding="straight-through"`` the mean absolute difference is well under 1/255 (most
pixels identical); ``"cubic"`` is looser (see the test for the tolerances).
"""
from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from advrepair.errors import InputError
from advrepair.validation import check_images
from advrepair.defenses.registry import register_defense

_LUMA_TABLE = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)
_CHROMA_TABLE = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
) + (99,) * 32

SUBSAMPLING = {"4:4:4": 0, "4:2:0": 2}
ROUNDING = ("cubic", "straight-through")


def _check_quality(quality: Any) -> int:
    if isinstance(quality, bool) or not isinstance(quality, (int, float)) or int(quality) != quality \
            or not 1 <= quality <= 100:
        raise InputError(f"JPEG quality must be an integer in [1, 100], got {quality!r}")
    return int(quality)


def _check_subsampling(subsampling: Any) -> str:
    if subsampling not in SUBSAMPLING:
        raise InputError(f"subsampling must be one of {sorted(SUBSAMPLING)}, got {subsampling!r}")
    return str(subsampling)


def _check_channels(images: torch.Tensor) -> None:
    if images.shape[1] not in (1, 3):
        raise InputError(f"JPEG needs grayscale (1 channel) or RGB (3 channels) images, "
                         f"got {images.shape[1]} channels")


def quantization_table(quality: int, chroma: bool = False) -> torch.Tensor:
    """The 8x8 baseline quantization table libjpeg uses for ``quality`` (natural order).

    ``jpeg_quality_scaling`` then ``jpeg_add_quant_table`` with ``force_baseline``: entries
    are clamped to [1, 255]. Shape (8, 8), float64.

    Example:
        >>> int(quantization_table(50)[0, 0])
        16
    """
    quality = _check_quality(quality)
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    base = torch.tensor(_CHROMA_TABLE if chroma else _LUMA_TABLE, dtype=torch.int64)
    return ((base * scale + 50) // 100).clamp(1, 255).to(torch.float64).reshape(8, 8)


def _dct_matrix(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Orthonormal 8-point DCT-II matrix D (coefficients = D @ block @ D.T); T.81's FDCT."""
    k = torch.arange(8, dtype=torch.float64)[:, None]
    n = torch.arange(8, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * n + 1) * k / 16) * math.sqrt(2 / 8)
    d[0] = d[0] / math.sqrt(2)
    return d.to(dtype=dtype, device=device)


def _straight_round(x: torch.Tensor) -> torch.Tensor:
    """Value exactly ``round(x)``, derivative 1."""
    return torch.round(x).detach() + (x - x.detach())


def _cubic_round(x: torch.Tensor) -> torch.Tensor:
    """Shin & Song 2017: ``round(x) + (x - round(x))^3``, derivative ``3 (x - round(x))^2``."""
    r = torch.round(x).detach()
    return r + (x - r) ** 3


def _rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168735892 * r - 0.331264108 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418687589 * g - 0.081312411 * b + 128
    return torch.stack([y, cb, cr], 1)


def _ycbcr_to_rgb(x: torch.Tensor) -> torch.Tensor:
    y, cb, cr = x.unbind(1)
    cb, cr = cb - 128, cr - 128
    r = y + 1.402 * cr
    g = y - 0.344136286 * cb - 0.714136286 * cr
    b = y + 1.772 * cb
    return torch.stack([r, g, b], 1)


def _pad_bottom(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate the last row of (..., h, w) until h is a multiple of ``multiple``."""
    extra = -x.shape[-2] % multiple
    if extra == 0:
        return x
    return torch.cat([x, x[..., -1:, :].expand(*x.shape[:-2], extra, x.shape[-1])], -2)


class DifferentiableJPEG(nn.Module):
    """A differentiable torch approximation of baseline JPEG (encode + decode).

    Args:
        quality: libjpeg quality, integer in [1, 100].
        subsampling: "4:2:0" (Pillow's default for RGB) or "4:4:4"; ignored for grayscale.
        rounding: how quantized DCT coefficients are rounded, "cubic" (Shin & Song 2017) or
            "straight-through" (exact value, identity derivative).

    Shapes: (B, C, H, W) in [0, 1] with C in {1, 3} -> same shape and dtype, in [0, 1].

    Example:
        >>> x = torch.rand(2, 3, 32, 32, requires_grad=True)
        >>> DifferentiableJPEG(75)(x).sum().backward()  # x.grad is finite and non-zero
    """

    def __init__(self, quality: int = 75, subsampling: str = "4:2:0", rounding: str = "cubic") -> None:
        super().__init__()
        self.quality = _check_quality(quality)
        self.subsampling = _check_subsampling(subsampling)
        if rounding not in ROUNDING:
            raise InputError(f"rounding must be one of {ROUNDING}, got {rounding!r}")
        self.rounding = rounding
        self.luma_q: torch.Tensor
        self.chroma_q: torch.Tensor
        self.register_buffer("luma_q", quantization_table(self.quality).float(), persistent=False)
        self.register_buffer("chroma_q", quantization_table(self.quality, chroma=True).float(), persistent=False)

    def params(self) -> dict[str, Any]:
        """Name and parameters, as recorded in results.json."""
        return {"name": "jpeg-differentiable", "quality": self.quality, "subsampling": self.subsampling,
                "rounding": self.rounding}

    def _coef_round(self, x: torch.Tensor) -> torch.Tensor:
        return _cubic_round(x) if self.rounding == "cubic" else _straight_round(x)

    def _code_plane(self, plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """DCT, quantize, dequantize, inverse DCT of (B, h, w) samples; h, w multiples of 8."""
        b, h, w = plane.shape
        d = _dct_matrix(plane.dtype, plane.device)
        blocks = (plane - 128).reshape(b, h // 8, 8, w // 8, 8).transpose(2, 3)
        coef = d @ blocks @ d.T
        q = table.to(plane.device, plane.dtype)
        coef = self._coef_round(coef / q) * q
        out = d.T @ coef @ d + 128
        out = _straight_round(out.clamp(0, 255))
        return out.transpose(2, 3).reshape(b, h, w)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        _check_channels(images)
        _, c, h, w = images.shape
        x = _straight_round(images * 255)
        if c == 1:
            block = 8
            xp = F.pad(x, (0, -w % block, 0, -h % block), mode="replicate")
            y = self._code_plane(xp[:, 0], self.luma_q)[:, :h, :w]
            return (y[:, None] / 255).to(images.dtype)
        sub = self.subsampling == "4:2:0"
        # libjpeg replicates the right edge at full resolution (to a whole chroma block when
        # subsampling), but pads the bottom of each *downsampled* component by its last row.
        xp = F.pad(x, (0, -w % (16 if sub else 8), 0, -h % (2 if sub else 8)), mode="replicate")
        ycc = _straight_round(_rgb_to_ycbcr(xp))
        luma = self._code_plane(_pad_bottom(ycc[:, 0], 8), self.luma_q)[:, :h, :w]
        chroma = ycc[:, 1:]
        if sub:
            chroma = _straight_round(F.avg_pool2d(chroma, 2))
        chroma = _pad_bottom(chroma, 8)
        bsz = chroma.shape[0]
        coded = self._code_plane(chroma.reshape(bsz * 2, *chroma.shape[2:]), self.chroma_q)
        coded = coded.reshape(bsz, 2, *chroma.shape[2:])
        if sub:
            ch, cw = (h + 1) // 2, (w + 1) // 2
            coded = F.interpolate(coded[:, :, :ch, :cw], scale_factor=2, mode="bilinear", align_corners=False)
            coded = _straight_round(coded)
        rgb = _ycbcr_to_rgb(torch.cat([luma[:, None], coded[:, :, :h, :w]], 1))
        rgb = _straight_round(rgb.clamp(0, 255))
        return (rgb / 255).to(images.dtype)


def pillow_jpeg(images: torch.Tensor, quality: int, subsampling: str = "4:2:0") -> torch.Tensor:
    """Real JPEG round trip through Pillow (libjpeg), one image at a time.

    Images are rounded to 8 bits, encoded at ``quality`` (baseline tables, ``subsampling``
    for RGB) and decoded. Shapes: (B, C, H, W), C in {1, 3} -> same shape, dtype and device.

    Example:
        >>> pillow_jpeg(torch.rand(2, 1, 28, 28), quality=50).shape
        torch.Size([2, 1, 28, 28])
    """
    from PIL import Image

    check_images(images)
    _check_channels(images)
    quality = _check_quality(quality)
    sub = SUBSAMPLING[_check_subsampling(subsampling)]
    data = (images.detach().to("cpu", torch.float64) * 255).round().to(torch.uint8).numpy()
    out = np.empty_like(data)
    for i, img in enumerate(data):
        if img.shape[0] == 1:
            pil = Image.fromarray(img[0], mode="L")
        else:
            pil = Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)), mode="RGB")
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=quality, subsampling=sub)
        buf.seek(0)
        with Image.open(buf) as decoded:
            arr = np.asarray(decoded.convert("L" if img.shape[0] == 1 else "RGB"))
        out[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return (torch.from_numpy(out).to(images.dtype) / 255).to(images.device)


@register_defense("jpeg", quality=75)
class JPEGCompression(nn.Module):
    """JPEG compression defense (Dziugaite et al. 2016; Guo et al. 2018).

    Args:
        quality: libjpeg quality, integer in [1, 100] (Guo et al. use 75).
        subsampling: "4:2:0" (Pillow's default) or "4:4:4"; RGB only.
        differentiable: run ``DifferentiableJPEG`` instead of the real codec.
        rounding: coefficient rounding of the differentiable version ("cubic" or
            "straight-through"); unused by the real codec.

    Shapes: (B, C, H, W) in [0, 1], C in {1, 3} -> same shape and dtype, in [0, 1].
    The real codec's output has no autograd graph (use BPDA).

    Example:
        >>> jpeg = JPEGCompression(75)
        >>> defended = nn.Sequential(jpeg, classifier)
        >>> attackable = nn.Sequential(BPDA(jpeg, jpeg.bpda_surrogate()), classifier)
    """

    def __init__(self, quality: int = 75, subsampling: str = "4:2:0", differentiable: bool = False,
                 rounding: str = "cubic") -> None:
        super().__init__()
        self.quality = _check_quality(quality)
        self.subsampling = _check_subsampling(subsampling)
        self.differentiable = bool(differentiable)
        self.approx = DifferentiableJPEG(self.quality, self.subsampling, rounding)

    def params(self) -> dict[str, Any]:
        """Name and parameters, as recorded in results.json."""
        p: dict[str, Any] = {"name": "jpeg", "quality": self.quality, "subsampling": self.subsampling,
                             "differentiable": self.differentiable}
        if self.differentiable:
            p["rounding"] = self.approx.rounding
        return p

    def bpda_surrogate(self) -> DifferentiableJPEG:
        """The differentiable approximation with the same quality and subsampling."""
        return self.approx

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.differentiable:
            return self.approx(images)
        return pillow_jpeg(images, self.quality, self.subsampling)
