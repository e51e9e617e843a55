"""The attack base class: owns validation, model mode, budget clipping and bookkeeping.

Each attack writes only ``perturb`` (its steps); the base class guarantees the result is
inside the budget and [0, 1], restores the model's train/eval mode, and counts forward and
backward passes per image for the reports (Foolbox 3 / torchattacks style).
"""
from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, cast

import torch
from torch import nn

from advrepair.attacks.losses import cross_entropy
from advrepair.engine import fast_input_gradients, project
from advrepair.enums import Norm
from advrepair.errors import InputError
from advrepair.seeding import per_image_uniform
from advrepair.validation import check_images, check_labels, check_positive, looks_like_probabilities


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
    #: whether ``set_target_mode`` applies (the attack's loss goes through ``objective``)
    supports_targets = False
    TARGET_MODES = ("given", "random", "least-likely")

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], *, eps: float,
                 norm: str | Norm = Norm.LINF, seed: int | None = 0) -> None:
        self.model = model
        self.eps = check_positive(eps, "eps", allow_zero=True)
        self.norm = Norm.parse(norm)
        self.seed = seed
        self.stats = AttackStats()
        self._checked_output = False
        self._unchecked_labels: torch.Tensor | None = None
        self.target_mode: str | None = None
        #: the target class of each image during a targeted call, else None
        self.targets: torch.Tensor | None = None

    # -- targeted modes (torchattacks' set_mode_targeted_* in one place) ------------------
    def set_target_mode(self, mode: str | None) -> "Attack":
        """``None`` (untargeted), ``"given"`` (targets passed to the call), ``"random"`` (a
        seeded class other than the label) or ``"least-likely"`` (the clean image's
        lowest logit). Returns the attack, for chaining."""
        if mode is not None and mode not in self.TARGET_MODES:
            raise InputError(f"unknown target mode {mode!r}; expected None or one of {self.TARGET_MODES}")
        if mode is not None and not self.supports_targets:
            raise InputError(f"attack {self.name!r} has no targeted mode")
        self.target_mode = mode
        return self

    def objective(self, logits: torch.Tensor, labels: torch.Tensor,
                  loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy) -> torch.Tensor:
        """Per-image value the attack maximizes: ``loss(logits, labels)``, or in a targeted
        call ``-loss(logits, targets)`` (move toward the target class)."""
        if self.targets is None:
            return loss(logits, labels)
        return -loss(logits, self.targets)

    def succeeded(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B,) booleans: misclassified, or in a targeted call classified as the target."""
        pred = logits.argmax(1)
        return pred != labels if self.targets is None else pred == self.targets

    def _choose_targets(self, images: torch.Tensor, labels: torch.Tensor,
                        targets: torch.Tensor | None, num_classes: int) -> torch.Tensor | None:
        if self.target_mode is None:
            if targets is not None:
                raise InputError("targets were given but the attack is untargeted; call set_target_mode('given')")
            return None
        if self.target_mode == "given":
            if targets is None:
                raise InputError("target mode 'given' needs targets: attack(images, labels, targets)")
            check_labels(targets, images.shape[0], num_classes)
            return targets.to(labels.device)
        if num_classes < 2:
            raise InputError("a targeted attack needs at least 2 classes")
        if self.target_mode == "random":
            u = per_image_uniform(images, self.seed, (), "targets")
            offset = (u * (num_classes - 1)).long().clamp(max=num_classes - 2)
            return torch.where(offset >= labels, offset + 1, offset)
        with torch.no_grad():
            return self.model(images).argmin(1)

    # -- what attacks call -------------------------------------------------------------
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits; every forward and every backward through them is counted (``counted``)."""
        out = self.counted(self.model(x), x.shape[0])
        if not self._checked_output:
            self._check_output(out)
        if self._unchecked_labels is not None:
            # the label range is checked on the attack's first forward, which costs no extra pass
            labels, self._unchecked_labels = self._unchecked_labels, None
            check_labels(labels, labels.shape[0], out.shape[-1])
        return out

    def counted(self, out: torch.Tensor, n_images: int) -> torch.Tensor:
        """The one place passes are counted: ``out`` is one forward pass for ``n_images`` images,
        and every backward pass that later flows through it counts ``n_images`` backward passes
        (a hook on the tensor), so no attack counts its gradients by hand."""
        self.stats.forward += n_images
        if isinstance(out, torch.Tensor) and out.requires_grad:
            def count_backward(_grad: torch.Tensor) -> None:
                self.stats.backward += n_images
            out.register_hook(count_backward)
        return out

    # -- the contract ----------------------------------------------------------------
    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None,
                 targets: torch.Tensor | None = None) -> torch.Tensor:
        check_images(images)
        if labels is None and not self.uses_labels:  # label-free attacks (SSP) accept None
            labels = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)
        check_labels(labels, images.shape[0])
        was_training = isinstance(self.model, nn.Module) and self.model.training
        if isinstance(self.model, nn.Module):
            self.model.eval()
        try:
            if self.uses_labels and (self.target_mode is not None or targets is not None):
                with torch.no_grad():
                    num_classes = self.model(images[:1]).shape[-1]
                check_labels(labels, images.shape[0], num_classes)
                assert labels is not None  # check_labels refuses None
                self.targets = self._choose_targets(images, labels, targets, num_classes)
            elif self.uses_labels:
                self._unchecked_labels = labels
            with fast_input_gradients(self.model):
                adv = self.perturb(images.detach(), cast(torch.Tensor, labels))  # None only for label-free attacks
        finally:
            self.targets = None
            self._unchecked_labels = None
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
        p = {"name": self.name, "eps": self.eps, "norm": self.norm.value, "seed": self.seed}
        if self.target_mode is not None:
            p["target"] = self.target_mode
        return p

    def _check_output(self, out: torch.Tensor) -> None:
        self._checked_output = True
        if out.dim() != 2:
            raise InputError(f"the model must return logits of shape (B, classes), got {tuple(out.shape)}")
        with torch.no_grad():
            if looks_like_probabilities(out):
                warnings.warn("the model's outputs look like probabilities (rows in [0, 1] summing to 1); "
                              "attacks expect logits: drop the final softmax", stacklevel=3)
