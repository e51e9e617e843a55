"""FGSM (Goodfellow et al. 2015): one signed-gradient step of size eps."""
from __future__ import annotations

from typing import Any, Callable

import torch

from advrepair.attacks.base import Attack
from advrepair.attacks.registry import register_attack


@register_attack("fgsm")
class FGSM(Attack):
    """``x + eps * sign(grad_x CE(f(x), y))``, clipped to [0, 1].

    Shapes: images (B, C, H, W) in [0, 1], labels (B,) -> (B, C, H, W).

    Example:
        >>> adv = FGSM(model, eps=0.1)(images, labels)
    """

    name = "fgsm"
    supports_targets = True

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], eps: float = 8 / 255,
                 seed: int | None = 0) -> None:
        super().__init__(model, eps=eps, norm="Linf", seed=seed)

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = images.clone().requires_grad_(True)
        with torch.enable_grad():
            loss = self.objective(self.logits(x), labels).sum()
            (grad,) = torch.autograd.grad(loss, x)
        return images + self.eps * grad.sign()

    def params(self) -> dict[str, Any]:
        p = super().params()
        p.update(steps=1)
        return p
