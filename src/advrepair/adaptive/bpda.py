"""BPDA, Backward Pass Differentiable Approximation (Athalye, Carlini & Wagner 2018).

The forward pass runs the real defense; the backward pass uses the gradient of a
differentiable surrogate (the identity by default). Written as a straight-through
estimator, ``s(x) + (g(x) - s(x)).detach()``, so any attack library sees an ordinary
module: ``nn.Sequential(BPDA(defense), classifier)``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from advrepair.errors import InputError


class BPDA(nn.Module):
    """Forward: ``defense(x)``; gradient: that of ``surrogate(x)`` (identity if None).

    Shapes: (B, C, H, W) -> (B, C, H, W), as the defense.

    Example:
        >>> attacked = PGD(nn.Sequential(BPDA(reverse_attack), classifier), eps=0.1)(x, y)
    """

    def __init__(self, defense: Callable[[torch.Tensor], torch.Tensor],
                 surrogate: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        if not callable(defense):
            raise InputError(f"BPDA needs a callable defense (images -> images), got {type(defense).__name__}")
        if surrogate is not None and not callable(surrogate):
            raise InputError(f"BPDA's surrogate must be None (identity) or callable, got {type(surrogate).__name__}")
        self.defense = defense
        self.surrogate = surrogate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.defense(x.detach())
        approx = x if self.surrogate is None else self.surrogate(x)
        return approx + (out - approx).detach()

    def params(self) -> dict[str, object]:
        inner = getattr(self.defense, "params", None)
        return {"name": "bpda", "surrogate": "identity" if self.surrogate is None else type(self.surrogate).__name__,
                "defense": inner() if callable(inner) else type(self.defense).__name__}
