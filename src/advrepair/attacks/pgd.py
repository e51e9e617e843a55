"""PGD (Madry et al. 2018): projected gradient ascent from a random start, with restarts."""
from __future__ import annotations

from typing import Any, Callable

import torch

from advrepair.attacks.base import Attack
from advrepair.attacks.losses import LOSSES
from advrepair.engine import project, projected_gradient, seeded_random_start
from advrepair.enums import Norm
from advrepair.errors import InputError
from advrepair.validation import check_int_at_least, check_positive
from advrepair.attacks.registry import register_attack


@register_attack("pgd")
class PGD(Attack):
    """Projected gradient descent on a classification loss, L-inf (sign steps) or L2.

    Each restart starts from a random point of the budget (per-image seeded), takes
    ``steps`` steps of size ``alpha`` and projects onto the ball and [0, 1]. Across
    restarts an image keeps the first iterate that fools the model, else the one with the
    highest loss.

    ``start`` replaces the random start: a function of the clean images whose output is
    projected onto the ball and [0, 1] before the first step (e.g. xiao2020's attack from
    the expected transformation E[g(x)]); ``start_name`` names it in ``params()``.

    Shapes: images (B, C, H, W) in [0, 1], labels (B,) -> (B, C, H, W).

    Example:
        >>> adv = PGD(model, eps=8/255, alpha=2/255, steps=10)(images, labels)
    """

    name = "pgd"
    supports_targets = True

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], eps: float = 8 / 255,
                 alpha: float = 2 / 255, steps: int = 10, random_start: bool = True,
                 restarts: int = 1, norm: str | Norm = Norm.LINF, loss: str = "ce",
                 seed: int | None = 0, start: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 start_name: str | None = None) -> None:
        super().__init__(model, eps=eps, norm=norm, seed=seed)
        self.alpha = check_positive(alpha, "alpha")
        if start is not None and not callable(start):
            raise InputError(f"start must be a function of the images or None, got {type(start).__name__}")
        if start is not None and restarts != 1:
            raise InputError("a given start is one start: use restarts=1")
        self.start, self.start_name = start, start_name
        check_int_at_least(steps, "steps", 0)
        check_int_at_least(restarts, "restarts", 1)
        if loss not in LOSSES:
            raise InputError(f"unknown loss {loss!r}; expected one of {sorted(LOSSES)}")
        self.steps, self.restarts, self.random_start = int(steps), int(restarts), bool(random_start)
        self.loss_name = loss
        self.loss = LOSSES[loss]

    def _run_once(self, images: torch.Tensor, labels: torch.Tensor, restart: int) -> torch.Tensor:
        if self.start is not None:
            with torch.no_grad():
                start = project(self.start(images.detach()), images, self.eps, self.norm)
        elif self.random_start:
            start = seeded_random_start(images, self.eps, self.norm, self.seed, f"pgd-start-{restart}")
        else:
            start = images

        def loss_fn(x: torch.Tensor, _step: int) -> torch.Tensor:
            return self.objective(self.logits(x), labels, self.loss)

        return projected_gradient(start, loss_fn, center=images, eps=self.eps, step_size=self.alpha,
                                  steps=self.steps, norm=self.norm, maximize=True)

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        best = self._run_once(images, labels, 0)
        if self.restarts == 1:
            return best
        with torch.no_grad():
            logits = self.logits(best)
            best_fooled = self.succeeded(logits, labels)
            best_loss = self.objective(logits, labels, self.loss)
        for r in range(1, self.restarts):
            if bool(best_fooled.all()):
                break
            cand = self._run_once(images, labels, r)
            with torch.no_grad():
                logits = self.logits(cand)
                fooled = self.succeeded(logits, labels)
                loss = self.objective(logits, labels, self.loss)
            take = (~best_fooled) & (fooled | (loss > best_loss))
            best = torch.where(take.view(-1, 1, 1, 1), cand, best)
            best_loss = torch.where(take, loss, best_loss)
            best_fooled = best_fooled | fooled
        return best

    def params(self) -> dict[str, Any]:
        p = super().params()
        p.update(alpha=self.alpha, steps=self.steps, restarts=self.restarts,
                 random_start=self.random_start, loss=self.loss_name)
        if self.start is not None:
            p.update(random_start=False, start=self.start_name or "custom")
        return p
