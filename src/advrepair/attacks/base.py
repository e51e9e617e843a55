"""The attack base class: owns validation, model mode, budget clipping and bookkeeping.

Each attack writes only ``perturb`` (its steps); the base class guarantees the result is
inside the budget and [0, 1], restores the model's train/eval mode, and counts forward and
backward passes per image for the reports (Foolbox 3 / torchattacks style).
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from advrepair.engine import project
from advrepair.enums import Norm
from advrepair.errors import InputError
from advrepair.validation import check_images, check_labels, check_positive


@dataclass
class AttackStats:
    """Passes through the model, summed over calls; divide by ``images`` for per-image cost."""

    images: int = 0
    forward: int = 0
    backward: int = 0

    def per_image(self) -> dict[str, float]:
        n = max(self.images, 1)
        return {"forward_per_image": self.forward / n, "backward_per_image": self.backward / n}


class Attack(ABC):
    """Base of every attack: ``Attack(model, eps=...)(images, labels) -> adversarial images``.

    Args:
        model: maps (B, C, H, W) images in [0, 1] to logits (B, K).
        eps: budget radius in ``norm``.
        norm: ``"Linf"`` or ``"L2"``.
        seed: seeds random starts per image (the same image gets the same start whatever
            its batch-mates); ``None`` draws from torch's global generator.
    """

    name = "attack"
    uses_labels = True

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], *, eps: float,
                 norm: str | Norm = Norm.LINF, seed: int | None = 0) -> None:
        self.model = model
        self.eps = check_positive(eps, "eps", allow_zero=True)
        self.norm = Norm.parse(norm)
        self.seed = seed
        self.stats = AttackStats()
        self._checked_output = False

    # -- what attacks call -------------------------------------------------------------
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits, counted as one forward pass per image."""
        self.stats.forward += x.shape[0]
        out = self.model(x)
        if not self._checked_output:
            self._check_output(out)
        return out

    def count_backward(self, n_images: int) -> None:
        self.stats.backward += n_images

    # -- the contract ----------------------------------------------------------------
    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        check_images(images)
        if labels is None and not self.uses_labels:  # label-free attacks (SSP) accept None
            labels = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)
        check_labels(labels, images.shape[0])
        if self.uses_labels:
            with torch.no_grad():
                check_labels(labels, images.shape[0], self.model(images[:1]).shape[-1])
        was_training = isinstance(self.model, nn.Module) and self.model.training
        if isinstance(self.model, nn.Module):
            self.model.eval()
        try:
            adv = self.perturb(images.detach(), labels)
        finally:
            if isinstance(self.model, nn.Module):
                self.model.train(was_training)
        self.stats.images += images.shape[0]
        return project(adv.detach(), images, self.eps, self.norm)

    forward = __call__

    @abstractmethod
    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return adversarial images; the base class clips them to the budget afterwards."""

    def params(self) -> dict[str, Any]:
        """The attack's name and parameters, as recorded in results.json."""
        return {"name": self.name, "eps": self.eps, "norm": self.norm.value, "seed": self.seed}

    def _check_output(self, out: torch.Tensor) -> None:
        self._checked_output = True
        if out.dim() != 2:
            raise InputError(f"the model must return logits of shape (B, classes), got {tuple(out.shape)}")
        with torch.no_grad():
            rows = out.detach().float()
            if bool((rows >= 0).all() and (rows <= 1).all()) and torch.allclose(
                    rows.sum(1), torch.ones(rows.shape[0], device=rows.device), atol=1e-3):
                warnings.warn("the model's outputs look like probabilities (rows in [0, 1] summing to 1); "
                              "attacks expect logits: drop the final softmax", stacklevel=3)
