"""Per-image classification losses an attack maximizes."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, K), (B,) -> (B,) cross-entropy per image."""
    return F.cross_entropy(logits, labels, reduction="none")


def margin(logits: torch.Tensor, labels: torch.Tensor, kappa: float = float("inf")) -> torch.Tensor:
    """C&W margin ``max_{j != y} z_j - z_y`` (clamped at ``kappa``), (B,) per image."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, labels[:, None], float("-inf"))
    return (other.max(1).values - true).clamp(max=kappa)


LOSSES = {"ce": cross_entropy, "margin": margin}
