"""Carlini & Wagner (2017, "Towards Evaluating the Robustness of Neural Networks"): the L2
optimization attack, and the L-inf PGD on their margin loss ("C&W" / "CW-inf" in papers)."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from advrepair.attacks.base import Attack
from advrepair.attacks.losses import margin
from advrepair.attacks.mifgsm import check_steps
from advrepair.attacks.pgd import PGD
from advrepair.enums import Norm
from advrepair.errors import InputError
from advrepair.validation import check_positive
from advrepair.attacks.registry import register_attack

#: Shrinks [-1, 1] before atanh so pixels at exactly 0 or 1 map to finite ``w`` and can
#: still move (an infinite ``w`` has zero gradient and would freeze them).
_TANH_SHRINK = 1 - 1e-6


def _to_tanh_space(images: torch.Tensor) -> torch.Tensor:
    return torch.atanh((2 * images - 1) * _TANH_SHRINK)


def _from_tanh_space(w: torch.Tensor) -> torch.Tensor:
    return (torch.tanh(w) + 1) / 2


@register_attack("cw")
class CW(Attack):
    """C&W L2 attack with a fixed trade-off constant (no binary search over ``c``).

    Optimizes ``w`` with Adam, where the image is ``(tanh(w) + 1) / 2`` (always inside
    [0, 1], so no clipping distorts the optimization), minimizing per image

        ``||x' - x||_2^2 + c * max(z_y - max_{j != y} z_j, -kappa)``.

    Returns, per image, the smallest-L2 iterate that the model misclassifies among all
    ``steps + 1`` iterates, else the last iterate. The attack is unbounded: the base class
    clips to ``eps`` in ``norm`` afterwards, and the default ``eps=inf`` (L2) clips nothing.
    Everything is per image (the loss is a sum of per-image terms and Adam acts per
    element), so results do not depend on batch-mates; there is no batch-wide early stop.

    Shapes: images (B, C, H, W) in [0, 1], labels (B,) -> (B, C, H, W).

    Example:
        >>> adv = CW(model, c=1.0, kappa=0.0, steps=50, lr=0.01)(images, labels)
    """

    name = "cw"

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], c: float = 1.0, kappa: float = 0.0,
                 steps: int = 50, lr: float = 0.01, eps: float = math.inf, norm: str | Norm = Norm.L2,
                 seed: int | None = 0) -> None:
        super().__init__(model, eps=eps, norm=norm, seed=seed)
        self.c = check_positive(c, "c")
        self.kappa = check_positive(kappa, "kappa", allow_zero=True)
        self.steps = check_steps(steps)
        self.lr = check_positive(lr, "lr")
        for name, value in (("c", self.c), ("kappa", self.kappa), ("lr", self.lr)):
            if math.isinf(value):
                raise InputError(f"{name} must be finite, got {value}")

    def _objective(self, adv: torch.Tensor, images: torch.Tensor, labels: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-image (objective, squared L2, fooled) of ``adv``."""
        logits = self.logits(adv)
        dist = (adv - images).flatten(1).pow(2).sum(1)
        # margin() is max_{j!=y} z_j - z_y clamped above at kappa; C&W's f is its negative
        f = -margin(logits, labels, self.kappa)
        return dist + self.c * f, dist, logits.argmax(1) != labels

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        w = _to_tanh_space(images).detach().requires_grad_(True)
        optimizer = torch.optim.Adam([w], lr=self.lr)
        best = images.clone()
        best_dist = torch.full((images.shape[0],), math.inf, device=images.device)

        def keep_best(adv: torch.Tensor, dist: torch.Tensor, fooled: torch.Tensor) -> None:
            nonlocal best, best_dist
            better = fooled & (dist < best_dist)
            best = torch.where(better.view(-1, 1, 1, 1), adv.detach(), best)
            best_dist = torch.where(better, dist.detach(), best_dist)

        for _ in range(self.steps):
            with torch.enable_grad():
                adv = _from_tanh_space(w)
                objective, dist, fooled = self._objective(adv, images, labels)
                # autograd.grad, not backward(): the model's parameters must not accumulate .grad
                w.grad = torch.autograd.grad(objective.sum(), w)[0]
            keep_best(adv, dist, fooled)
            optimizer.step()
        with torch.no_grad():
            last = _from_tanh_space(w)
            _, dist, fooled = self._objective(last, images, labels)
            keep_best(last, dist, fooled)
        return torch.where(torch.isfinite(best_dist).view(-1, 1, 1, 1), best, last)

    def params(self) -> dict[str, Any]:
        p = super().params()
        p.update(c=self.c, kappa=self.kappa, steps=self.steps, lr=self.lr)
        return p


@register_attack("cw-pgd")
class CWPGD(PGD):
    """PGD on the C&W margin loss ``max_{j != y} z_j - z_y``: the "C&W" (e.g. "CW-200" with
    ``steps=200``) attack of robustness papers, L-inf by default.

    The margin, unlike cross-entropy, does not saturate once the image is misclassified
    and is insensitive to logit scale, which catches defenses that only flatten the softmax.

    Shapes: images (B, C, H, W) in [0, 1], labels (B,) -> (B, C, H, W).

    Example:
        >>> adv = CWPGD(model, eps=8/255, alpha=2/255, steps=200)(images, labels)
    """

    name = "cw-pgd"

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], eps: float = 8 / 255,
                 alpha: float = 2 / 255, steps: int = 20, random_start: bool = True, restarts: int = 1,
                 norm: str | Norm = Norm.LINF, seed: int | None = 0) -> None:
        super().__init__(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start,
                         restarts=restarts, norm=norm, loss="margin", seed=seed)
