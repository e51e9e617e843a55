"""APGD-T (Croce & Hein 2020): APGD with the targeted DLR loss, run once per likely class."""
from __future__ import annotations

from typing import Any, Callable

import torch

from advrepair.attacks.apgd import APGD, LogitLoss, check_count
from advrepair.attacks.losses import targeted_dlr_loss
from advrepair.enums import Norm
from advrepair.errors import InputError
from advrepair.attacks.registry import register_attack


@register_attack("apgd-t")
class APGDT(APGD):
    """Targeted APGD over the ``n_target_classes`` classes the model ranks highest after the truth.

    For the k-th target (k = 1..n) each image is pushed towards the class with the
    (k+1)-th largest clean logit by maximizing the targeted DLR loss, with ``n_restarts``
    runs per target. Targets and restarts run in that order, each only on the images no
    earlier run has misclassified, so an image keeps its first success. An image counts as
    fooled when misclassified as any wrong class, not only the target (as in the paper).
    ``n_target_classes`` beyond ``classes - 1`` is capped there, so AutoAttack's default of
    9 also works on smaller label sets. Needs at least 4 classes (the targeted DLR loss).

    Shapes: images (B, C, H, W) in [0, 1], labels (B,) -> (B, C, H, W).

    Example:
        >>> adv = APGDT(model, eps=8/255, steps=100, n_target_classes=9)(images, labels)
    """

    name = "apgd-t"

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], eps: float = 8 / 255,
                 norm: str | Norm = Norm.LINF, steps: int = 100, n_restarts: int = 1,
                 n_target_classes: int = 9, rho: float = 0.75, eot_iter: int = 1,
                 seed: int | None = 0, eot_batched: bool = False) -> None:
        super().__init__(model, eps=eps, norm=norm, steps=steps, n_restarts=n_restarts, loss="dlr",
                         rho=rho, eot_iter=eot_iter, seed=seed, eot_batched=eot_batched)
        self.n_target_classes = check_count(n_target_classes, "n_target_classes")
        self.loss_name = "dlr-targeted"
        self.name = "apgd-t"

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            clean = self.logits(images)
        if clean.shape[1] < 4:
            raise InputError(f"APGD-T's targeted DLR loss needs at least 4 classes, the model has {clean.shape[1]}")
        ranked = clean.argsort(dim=1, descending=True)
        n_targets = min(self.n_target_classes, clean.shape[1] - 1)

        def loss_for_target(k: int) -> Callable[[torch.Tensor], LogitLoss]:
            # ranked[:, 0] is the prediction (the label, for every image still attacked)
            targets = ranked[:, k]

            def loss_for(idx: torch.Tensor) -> LogitLoss:
                y, t = labels[idx], targets[idx]
                return lambda logits: targeted_dlr_loss(logits, y, t)

            return loss_for

        runs = ((f"apgd-t-start-{k}-{r}", loss_for_target(k))
                for k in range(1, n_targets + 1) for r in range(self.n_restarts))
        return self._attack(images, labels, clean, runs)

    def params(self) -> dict[str, Any]:
        p = super().params()
        p.update(n_target_classes=self.n_target_classes)
        return p
