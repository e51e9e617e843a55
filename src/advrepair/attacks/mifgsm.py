"""MI-FGSM (Dong et al. 2018, "Boosting Adversarial Attacks with Momentum")."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from advrepair.attacks.base import Attack
from advrepair.engine import MomentumSignStep, StepRule, projected_gradient
from advrepair.enums import Norm
from advrepair.errors import InputError
from advrepair.validation import check_int_at_least, check_positive
from advrepair.attacks.registry import register_attack

#: ``transform(x, step) -> what the model sees at that step`` (input diversity, say).
InputTransform = Callable[[torch.Tensor, int], torch.Tensor]


def check_decay(decay: float) -> float:
    """A momentum decay must be a finite number >= 0 (an infinite one turns the velocity to NaN)."""
    value = check_positive(decay, "decay", allow_zero=True)
    if math.isinf(value):
        raise InputError(f"decay must be finite, got {decay}")
    return value


def check_steps(steps: int) -> int:
    """Step counts are non-negative integers (``2.0`` is accepted as 2, ``2.5`` is not)."""
    return check_int_at_least(steps, "steps", 0)


@register_attack("mifgsm")
class MIFGSM(Attack):
    """Iterative FGSM with momentum on the L1-normalized gradient, L-inf budget.

    Each step accumulates ``g <- decay * g + grad / ||grad||_1`` and moves by
    ``alpha * sign(g)``, then clips to the ``eps`` ball and [0, 1]. The momentum
    stabilizes the direction across steps, which is what makes the examples transfer
    better than BIM's. Starts at the clean image. ``decay=0`` is BIM.

    Subclasses (DI-FGSM, TI-FGSM) change only where the loop starts, what the model sees
    at each step and how the gradient becomes a direction, through the three ``_`` hooks.

    Shapes: images (B, C, H, W) in [0, 1], labels (B,) -> (B, C, H, W).

    Example:
        >>> adv = MIFGSM(model, eps=8/255, alpha=2/255, steps=10, decay=1.0)(images, labels)
    """

    name = "mifgsm"
    supports_targets = True

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], eps: float = 8 / 255,
                 alpha: float = 2 / 255, steps: int = 10, decay: float = 1.0,
                 seed: int | None = 0) -> None:
        super().__init__(model, eps=eps, norm=Norm.LINF, seed=seed)
        self.alpha = check_positive(alpha, "alpha")
        self.steps = check_steps(steps)
        self.decay = check_decay(decay)

    # -- hooks -----------------------------------------------------------------------
    def _start(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def _input_transform(self, images: torch.Tensor) -> InputTransform | None:
        """Called once per batch with the clean images, so random draws can be per-image seeded."""
        return None

    def _step_rule(self) -> StepRule:
        return MomentumSignStep(self.decay)

    # -- the attack ------------------------------------------------------------------
    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        start = self._start(images)
        transform = self._input_transform(images)

        def loss_fn(x: torch.Tensor, step: int) -> torch.Tensor:
            seen = x if transform is None else transform(x, step)
            return self.objective(self.logits(seen), labels)

        return projected_gradient(start, loss_fn, center=images, eps=self.eps, step_size=self.alpha,
                                  steps=self.steps, norm=Norm.LINF, maximize=True,
                                  step_rule=self._step_rule())

    def params(self) -> dict[str, Any]:
        p = super().params()
        p.update(alpha=self.alpha, steps=self.steps, decay=self.decay)
        return p
