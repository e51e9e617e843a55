"""Random resizing and padding defense (Xie, Wang, Zhang, Ren & Yuille 2018, "Mitigating
adversarial effects through randomization", Sec. 3).

Per image: resize the H x W image to a random size s x s' with s uniform in
{H, ..., S - 1} (Xie et al.: 299 -> [299, 331)), then zero-pad it at a random position to a
fixed S x S' canvas (Xie et al.: 331 x 331), where S = round(H * ratio) and
ratio defaults to 331 / 299.

Deviations, on purpose:
- The padded canvas is resized back to H x W (bilinear), because the classifiers here expect
  their training size; Xie et al. feed the 331 x 331 canvas to the network.
- Non-square images keep their aspect ratio: s' = round(W * s / H).
- The pad offsets are uniform over every position that fits (0 .. S - s inclusive).
- Randomness is per image, drawn from (seed, the image's content) via advrepair.seeding, so a
  defended image does not depend on its batch-mates; ``seed=None`` draws from torch's global
  generator (a truly random defense, as EOT needs). With a fixed seed the defense is a
  deterministic function of the image, and EOT over it averages copies of one draw.

The first resize is nearest-neighbour by default (as Xie et al.'s code) or bilinear; the
whole forward is differentiable (almost everywhere for nearest).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from advrepair.errors import InputError
from advrepair.seeding import per_image_uniform
from advrepair.validation import check_images
from advrepair.defenses.registry import register_defense

MODES = ("nearest", "bilinear")


@register_defense("resize-pad")
class RandomResizePad(nn.Module):
    """Random resize then random zero padding, resized back to the input size (Xie et al. 2018).

    Args:
        ratio: canvas side / image side, > 1 (Xie et al.: 331 / 299).
        mode: interpolation of the random resize, "nearest" or "bilinear".
        seed: seeds the per-image draws; None = truly random.

    Shapes: (B, C, H, W) in [0, 1] -> same shape and dtype, in [0, 1].

    Example:
        >>> defense = RandomResizePad(seed=0)
        >>> defended = nn.Sequential(defense, classifier)
    """

    def __init__(self, ratio: float = 331 / 299, mode: str = "nearest", seed: int | None = 0) -> None:
        super().__init__()
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) \
                or ratio <= 1:
            raise InputError(f"ratio must be a finite number > 1 (canvas larger than the image), got {ratio!r}")
        if mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {mode!r}")
        self.ratio = float(ratio)
        self.mode = mode
        self.seed = seed

    def params(self) -> dict[str, Any]:
        """Name and parameters, as recorded in results.json."""
        return {"name": "resize-pad", "ratio": self.ratio, "mode": self.mode, "seed": self.seed}

    def canvas_size(self, h: int, w: int) -> tuple[int, int]:
        """(S, S'): the padded canvas for an h x w image."""
        s = round(h * self.ratio)
        if s <= h:
            raise InputError(f"ratio {self.ratio} gives no room to resize a {h}-pixel image "
                             f"(canvas {s}); use a larger ratio or larger images")
        return s, max(w + 1, round(w * s / h))

    def draws(self, images: torch.Tensor) -> list[tuple[int, int, int, int]]:
        """Per image (resized h, resized w, top, left), from the seeded per-image numbers."""
        _, _, h, w = images.shape
        big_h, big_w = self.canvas_size(h, w)
        u = per_image_uniform(images, self.seed, (3,), stream="resize-pad").cpu().tolist()
        out = []
        for u_size, u_top, u_left in u:
            rh = min(h + int(u_size * (big_h - h)), big_h - 1)
            rw = min(max(1, round(w * rh / h)), big_w)
            top = min(int(u_top * (big_h - rh + 1)), big_h - rh)
            left = min(int(u_left * (big_w - rw + 1)), big_w - rw)
            out.append((rh, rw, top, left))
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        _, _, h, w = images.shape
        big_h, big_w = self.canvas_size(h, w)
        canvases = []
        for img, (rh, rw, top, left) in zip(images, self.draws(images)):
            kwargs = {} if self.mode == "nearest" else {"align_corners": False}
            resized = F.interpolate(img[None], size=(rh, rw), mode=self.mode, **kwargs)
            canvases.append(F.pad(resized, (left, big_w - rw - left, top, big_h - rh - top)))
        canvas = torch.cat(canvases)
        out = F.interpolate(canvas, size=(h, w), mode="bilinear", align_corners=False)
        return out.clamp(0, 1).to(images.dtype)
