"""Training recipes: everything needed to reproduce a checkpoint, recorded in its card."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ClassifierRecipe:
    """Standard training, or PGD adversarial training (Madry et al. 2018) when ``adversarial``.

    Adversarial training minimizes the cross-entropy of PGD(eps, alpha, steps) images made
    on the fly from a random start.
    """

    epochs: int = 3
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"
    adversarial: bool = False
    eps: float = 0.1
    alpha: float = 0.05
    steps: int = 5
    train_subset: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.adversarial:
            for k in ("eps", "alpha", "steps"):
                d.pop(k)
        return d


@dataclass(frozen=True)
class SSLRecipe:
    """Offline training of a self-supervised head on a frozen classifier (mao2021 Sec. 4.3:
    Adam, lr 1e-3, batch 128, tau 0.2)."""

    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    train_subset: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
