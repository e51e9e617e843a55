"""DI-FGSM (Xie et al. 2019, "Improving Transferability of Adversarial Examples with Input
Diversity"), and DIM when combined with momentum."""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from advrepair.attacks.mifgsm import MIFGSM, InputTransform
from advrepair.engine import seeded_random_start
from advrepair.enums import Norm
from advrepair.errors import InputError
from advrepair.seeding import per_image_uniform
from advrepair.validation import check_positive
from advrepair.attacks.registry import register_attack

#: Uniform numbers per image and step: apply?, resized size, top padding, left padding.
DIVERSITY_NUMBERS = 4


def diversity_sizes(size: int, resize_rate: float) -> tuple[int, int]:
    """``(smallest resized side, padded side)`` for one image side.

    The resized side is drawn from ``[low, padded - 1]``: with ``resize_rate < 1`` the image
    shrinks to between ``size * resize_rate`` and ``size - 1`` pixels and is padded back to
    ``size``; with ``resize_rate > 1`` it grows to between ``size`` and
    ``size * resize_rate - 1`` and is padded to ``int(size * resize_rate)``.
    """
    scaled = int(size * resize_rate)
    low, padded = (scaled, size) if resize_rate < 1 else (size, scaled)
    if low < 1:
        raise InputError(f"resize_rate {resize_rate} shrinks {size}-pixel images to nothing; use a larger one")
    if padded <= low:
        raise InputError(f"resize_rate {resize_rate} leaves no room to resize {size}-pixel images "
                         f"(int({size} * {resize_rate}) == {size}); move it further from 1")
    return low, padded


def check_diversity(images: torch.Tensor, resize_rate: float) -> None:
    """Raise ``InputError`` before any work if ``resize_rate`` does not fit the image size."""
    for side in images.shape[-2:]:
        diversity_sizes(int(side), resize_rate)


def input_diversity(x: torch.Tensor, numbers: torch.Tensor, resize_rate: float,
                    diversity_prob: float) -> torch.Tensor:
    """Randomly resize and zero-pad each image, with probability ``diversity_prob``.

    Image ``i`` is transformed when ``numbers[i, 0] < diversity_prob``: resized (bilinear)
    to a side drawn with ``numbers[i, 1]`` (see ``diversity_sizes``; one draw for both sides
    so square images stay square), then placed at a top/left offset drawn with
    ``numbers[i, 2:4]`` on a zero canvas. When the canvas is larger than the input
    (``resize_rate > 1``) it is resized back so the model always sees its input size.
    Differentiable in ``x``.

    Args:
        x: (B, C, H, W) images.
        numbers: (B, 4) uniform numbers in [0, 1), one row per image.

    Returns:
        (B, C, H, W).
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    (low_h, pad_h), (low_w, pad_w) = diversity_sizes(h, resize_rate), diversity_sizes(w, resize_rate)

    def pick(u: float, n: int) -> int:  # uniform on {0, ..., n-1}; min() guards float rounding
        return min(int(u * n), n - 1)

    # Images sharing a draw are transformed together: few distinct draws exist for small
    # images, and per-image draws are what keep an image's result free of its batch-mates.
    groups: dict[tuple[int, int, int, int], list[int]] = {}
    for i, (u_apply, u_size, u_top, u_left) in enumerate(numbers.tolist()):
        if not u_apply < diversity_prob:
            continue
        side_h = low_h + pick(u_size, pad_h - low_h)
        side_w = low_w + pick(u_size, pad_w - low_w)
        # the side is at most padded - 1, so at least one row/column of padding is left
        key = (side_h, side_w, pick(u_top, pad_h - side_h), pick(u_left, pad_w - side_w))
        groups.setdefault(key, []).append(i)
    out = x
    for (side_h, side_w, top, left), rows in groups.items():
        idx = torch.tensor(rows, device=x.device)
        part = F.interpolate(x.index_select(0, idx), size=(side_h, side_w), mode="bilinear",
                             align_corners=False)
        part = F.pad(part, [left, pad_w - side_w - left, top, pad_h - side_h - top], value=0.0)
        if (pad_h, pad_w) != (h, w):
            part = F.interpolate(part, size=(h, w), mode="bilinear", align_corners=False)
        out = out.index_copy(0, idx, part)
    return out


@register_attack("difgsm")
class DIFGSM(MIFGSM):
    """Iterative FGSM (optionally with momentum: DIM) whose gradient is taken through a
    random resize-and-pad of the current iterate at each step, L-inf budget.

    The transform (see ``input_diversity``) is applied with probability ``diversity_prob``
    per image and step; its numbers are drawn up front for all steps, per image from
    ``seed`` and the image's content, so an image's result does not depend on its
    batch-mates (torchattacks draws one transform per batch instead). ``decay > 0`` adds
    MI-FGSM's momentum; ``random_start`` starts uniformly inside the ball.

    Shapes: images (B, C, H, W) in [0, 1], labels (B,) -> (B, C, H, W).

    Example:
        >>> adv = DIFGSM(model, eps=8/255, alpha=2/255, steps=10, diversity_prob=0.5)(images, labels)
    """

    name = "difgsm"

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], eps: float = 8 / 255,
                 alpha: float = 2 / 255, steps: int = 10, decay: float = 0.0,
                 resize_rate: float = 0.9, diversity_prob: float = 0.5, random_start: bool = False,
                 seed: int | None = 0) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, decay=decay, seed=seed)
        self.resize_rate = check_positive(resize_rate, "resize_rate")
        if self.resize_rate == 1.0:
            raise InputError("resize_rate must differ from 1 (1 would make the transform a no-op); "
                             "use diversity_prob=0 to switch input diversity off")
        if isinstance(diversity_prob, bool) or not isinstance(diversity_prob, (int, float)) \
                or not 0.0 <= diversity_prob <= 1.0:
            raise InputError(f"diversity_prob must be a probability in [0, 1], got {diversity_prob!r}")
        self.diversity_prob = float(diversity_prob)
        if not isinstance(random_start, bool):
            raise InputError(f"random_start must be True or False, got {random_start!r}")
        self.random_start = random_start

    def _start(self, images: torch.Tensor) -> torch.Tensor:
        if not self.random_start:
            return images
        return seeded_random_start(images, self.eps, Norm.LINF, self.seed, f"{self.name}-start")

    def _input_transform(self, images: torch.Tensor) -> InputTransform | None:
        if self.diversity_prob == 0.0:
            return None
        check_diversity(images, self.resize_rate)
        numbers = per_image_uniform(images, self.seed, (self.steps, DIVERSITY_NUMBERS),
                                    stream=f"{self.name}-diversity")

        def transform(x: torch.Tensor, step: int) -> torch.Tensor:
            return input_diversity(x, numbers[:, step], self.resize_rate, self.diversity_prob)

        return transform

    def params(self) -> dict[str, Any]:
        p = super().params()
        p.update(resize_rate=self.resize_rate, diversity_prob=self.diversity_prob,
                 random_start=self.random_start)
        return p
