"""Random-noise reversal: mao2021's baseline for the reverse attack (Sec. 4.6, Figure 7).

    x' = clip_[0,1](x + n),   n uniform in the eps_v ball (L-inf box, or L2 ball by volume)

It is the reverse attack's own random start with none of its self-supervised steps: with the
same ``seed`` and ``norm`` it returns exactly the first iterate of
``ReverseAttack(..., eps_v=eps_v, seed=seed).trajectory(x)``, so the difference between the
two is what self-supervision adds over noise of the same budget. The noise is drawn per image
from the seed and the image's content (the same input always gets the same noise; batch-mates
never matter); ``seed=None`` draws fresh noise on every call.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from advrepair.defenses.registry import register_defense
from advrepair.engine import seeded_random_start
from advrepair.enums import Norm
from advrepair.validation import check_images, check_positive, check_seed

#: the reverse attack's stream name for its start: sharing it is what makes the two comparable
START_STREAM = "reverse-start"


@register_defense("random-noise", eps_v=0.2)
class RandomNoise(nn.Module):
    """Add seeded uniform noise of budget ``eps_v`` and clip to [0, 1].

    Args:
        eps_v: the noise budget (the reverse attack's eps_v it is compared with).
        norm: "Linf" (uniform in the box) or "L2" (uniform in the ball's volume).
        seed: seeds the per-image noise; ``None`` makes every call a new draw.

    Shapes: (B, C, H, W) in [0, 1] -> same shape, in [0, 1].

    Example:
        >>> noisy = RandomNoise(eps_v=0.2)(images)
        >>> defended = nn.Sequential(RandomNoise(0.2), classifier)
    """

    def __init__(self, eps_v: float = 0.2, norm: str | Norm = Norm.LINF, seed: int | None = 0) -> None:
        super().__init__()
        self.eps_v = check_positive(eps_v, "eps_v")
        self.norm = Norm.parse(norm)
        self.seed = check_seed(seed)

    def params(self) -> dict[str, Any]:
        """Name and parameters, as recorded in results.json."""
        return {"name": "random-noise", "eps_v": self.eps_v, "norm": self.norm.value, "seed": self.seed}

    def bpda_surrogate(self) -> nn.Module:
        """The identity: the noise does not depend on the gradient's direction."""
        return nn.Identity()

    def fresh_randomness(self) -> "RandomNoise":
        """The same noise model with a new draw on every call (what EOT averages over)."""
        return RandomNoise(self.eps_v, self.norm, seed=None)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        noise = seeded_random_start(images.detach(), self.eps_v, self.norm, self.seed, START_STREAM) - images.detach()
        return (images + noise).clamp(0, 1)
