"""Transfer attacks: adversarial images crafted on a source model, evaluated on a target."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from advrepair.attacks.base import Attack
from advrepair.attacks.registry import make_attack, register_attack


@register_attack("transfer")
class Transfer(Attack):
    """Run ``attack`` (a registry name and its parameters) on ``source``; the model given
    first is the target the images are meant for, used only to check the labels' range.

    The base class still clips the result to ``eps`` around the clean images, so a source
    attack with a larger budget cannot leak past the target's threat model.

    Shapes: images (B, C, H, W) in [0, 1], labels (B,) -> (B, C, H, W).

    Example:
        >>> adv = Transfer(target, source=other_model, attack="mifgsm", eps=0.1)(images, labels)
    """

    name = "transfer"

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], source: nn.Module, attack: str = "pgd",
                 eps: float = 8 / 255, source_name: str = "source", **attack_params: Any) -> None:
        self.inner = make_attack(attack, source, eps=eps, **attack_params)
        super().__init__(model, eps=eps, norm=self.inner.norm, seed=self.inner.seed)
        self.source, self.source_name = source, source_name

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        forward, backward = self.inner.stats.forward, self.inner.stats.backward
        adv = self.inner(images, labels)
        # passes through the source model are the attack's cost
        self.stats.forward += self.inner.stats.forward - forward
        self.stats.backward += self.inner.stats.backward - backward
        return adv

    def params(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source_name, "attack": self.inner.params(),
                "eps": self.eps, "norm": self.norm.value}
