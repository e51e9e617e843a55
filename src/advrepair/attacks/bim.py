"""BIM (Kurakin et al. 2017, "Adversarial examples in the physical world"): iterative FGSM."""
from __future__ import annotations

from typing import Callable

import torch

from advrepair.attacks.pgd import PGD
from advrepair.validation import check_positive
from advrepair.attacks.registry import register_attack


def bim_default_steps(eps: float) -> int:
    """Kurakin et al.'s step count ``min(eps*255 + 4, 1.25 * eps*255)`` for a [0, 1] budget."""
    return int(min(eps * 255 + 4, 1.25 * eps * 255))


@register_attack("bim")
class BIM(PGD):
    """Iterated signed-gradient steps of size ``alpha`` on the cross-entropy, clipped to the
    L-inf ball of radius ``eps`` and to [0, 1] after every step; starts at the clean image.

    It is PGD without the random start (same loop, same projection), kept as its own name
    because papers and torchattacks report it under that name. ``steps=0`` asks for the
    paper's heuristic ``int(min(eps*255 + 4, 1.25*eps*255))``, as in torchattacks.

    Shapes: images (B, C, H, W) in [0, 1], labels (B,) -> (B, C, H, W).

    Example:
        >>> adv = BIM(model, eps=8/255, alpha=2/255, steps=10)(images, labels)
    """

    name = "bim"

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], eps: float = 8 / 255,
                 alpha: float = 2 / 255, steps: int = 10, seed: int | None = 0) -> None:
        # eps is checked here too because the steps=0 heuristic needs a valid number first
        eps = check_positive(eps, "eps", allow_zero=True)
        if isinstance(steps, (int, float)) and not isinstance(steps, bool) and steps == 0:
            steps = bim_default_steps(eps)
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=False, restarts=1,
                         norm="Linf", loss="ce", seed=seed)

