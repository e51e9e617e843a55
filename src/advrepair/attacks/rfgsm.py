"""R+FGSM (Tramèr et al. 2018): a random sign step, then an FGSM step with the rest of the budget."""
from __future__ import annotations

from typing import Any, Callable

import torch

from advrepair.attacks.base import Attack
from advrepair.attacks.registry import register_attack
from advrepair.errors import InputError
from advrepair.seeding import per_image_uniform
from advrepair.validation import check_positive


@register_attack("rfgsm")
class RFGSM(Attack):
    """``x' = x + alpha * sign(n)``, then ``x' + (eps - alpha) * sign(grad_x' CE(f(x'), y))``.

    Tramèr, Kurakin, Papernot, Goodfellow, Boneh, McDaniel, "Ensemble Adversarial Training:
    Attacks and Defenses", ICLR 2018 (Eq. 7): the random step leaves the data point's sharp
    curvature before the gradient is taken. ``sign(n)`` is a per-image seeded +-1 per pixel (the
    sign of a Gaussian has the same law), so an image's result does not depend on its
    batch-mates; ``seed=None`` draws from torch's global generator. The random point is clipped
    to [0, 1] before the gradient; the result to the eps box and [0, 1] (base class).
    NRP (naseer2020) reports it as a transfer attack.

    Args:
        model: maps (B, C, H, W) images in [0, 1] to logits (B, K).
        eps: L-inf budget.
        alpha: the random step, in (0, eps); default eps / 2 (the paper's ImageNet setting,
            alpha = eps / 2).
        seed: seeds the random signs per image.

    Shapes: images (B, C, H, W) in [0, 1], labels (B,) -> (B, C, H, W).

    Example:
        >>> adv = RFGSM(model, eps=0.1)(images, labels)      # alpha = 0.05
    """

    name = "rfgsm"
    supports_targets = True

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], eps: float = 8 / 255,
                 alpha: float | None = None, seed: int | None = 0) -> None:
        super().__init__(model, eps=eps, norm="Linf", seed=seed)
        self.alpha = self.eps / 2 if alpha is None else check_positive(alpha, "alpha")
        if self.eps > 0 and not self.alpha < self.eps:
            raise InputError(f"alpha must be below eps (the FGSM step is eps - alpha), got alpha {self.alpha} "
                             f"and eps {self.eps}")

    def random_signs(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> +-1 per pixel, drawn per image."""
        u = per_image_uniform(images, self.seed, tuple(images.shape[1:]), "rfgsm-start")
        return torch.where(u < 0.5, -1.0, 1.0).to(images.dtype)

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        start = (images + self.alpha * self.random_signs(images)).clamp(0, 1).requires_grad_(True)
        with torch.enable_grad():
            loss = self.objective(self.logits(start), labels).sum()
            (grad,) = torch.autograd.grad(loss, start)
        return start.detach() + (self.eps - self.alpha) * grad.sign()

    def params(self) -> dict[str, Any]:
        p = super().params()
        p.update(alpha=self.alpha, steps=1)
        return p
