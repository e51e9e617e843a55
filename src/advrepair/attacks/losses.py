"""Per-image classification losses an attack maximizes."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from advrepair.errors import InputError


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, K), (B,) -> (B,) cross-entropy per image."""
    return F.cross_entropy(logits, labels, reduction="none")


def margin(logits: torch.Tensor, labels: torch.Tensor, kappa: float = float("inf")) -> torch.Tensor:
    """C&W margin ``max_{j != y} z_j - z_y`` (clamped at ``kappa``), (B,) per image."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, labels[:, None], float("-inf"))
    gap = other.max(1).values - true
    return gap if kappa == float("inf") else gap.clamp(max=kappa)


_DLR_EPS = 1e-12


def dlr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio, (B, K), (B,) -> (B,) (Croce & Hein 2020, eq. 5).

    ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)`` with ``z_pi`` the logits sorted in
    decreasing order. Invariant to shifting and rescaling the logits, so a model cannot hide
    behind saturated (huge) logits the way it can against cross-entropy.

    Raises:
        InputError: with fewer than 3 classes (there is no third-largest logit).
    """
    if logits.shape[-1] < 3:
        raise InputError(f"the DLR loss needs at least 3 classes, the model has {logits.shape[-1]}")
    ordered = logits.sort(dim=1, descending=True).values
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], float("-inf")).max(1).values
    return -(true - other) / (ordered[:, 0] - ordered[:, 2] + _DLR_EPS)


def targeted_dlr_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targeted DLR, (B, K), (B,), (B,) -> (B,) (Croce & Hein 2020, eq. 6).

    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``: grows as the target logit ``z_t``
    overtakes the true one.

    Raises:
        InputError: with fewer than 4 classes (there is no fourth-largest logit).
    """
    if logits.shape[-1] < 4:
        raise InputError(f"the targeted DLR loss needs at least 4 classes, the model has {logits.shape[-1]}")
    ordered = logits.sort(dim=1, descending=True).values
    true = logits.gather(1, labels[:, None]).squeeze(1)
    target = logits.gather(1, targets[:, None]).squeeze(1)
    return -(true - target) / (ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + _DLR_EPS)


LOSSES = {"ce": cross_entropy, "margin": margin, "dlr": dlr_loss}
