"""EOT, Expectation over Transformation (Athalye et al. 2018) for randomized defenses.

``EOT(model, draws=R)`` evaluates a randomized model on R copies of every image in one
batched call and returns the mean of the R outputs, so the gradient any attack takes is
the average over the R draws of the gradient of the model's output (logits averaged
before the attack's loss, the common practical form; attacks that average loss
gradients themselves, such as ``APGD(eot_iter=R)``, are the other form).

The draws must differ: a defense whose randomness is seeded per image (advrepair's
default) gives R identical copies; build it with ``seed=None`` for EOT.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from advrepair.errors import InputError
from advrepair.validation import check_int_at_least


class EOT(nn.Module):
    """Mean output of ``model`` over ``draws`` batched random draws.

    Shapes: (B, C, H, W) -> (B, K) (whatever ``model`` returns per image).
    """

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], draws: int = 10) -> None:
        super().__init__()
        if not callable(model):
            raise InputError(f"EOT needs a callable model, got {type(model).__name__}")
        check_int_at_least(draws, "draws", 1)
        self.model = model
        self.draws = draws

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        copies = x.unsqueeze(0).expand(self.draws, *x.shape).reshape(self.draws * b, *x.shape[1:])
        out = self.model(copies)
        return out.view(self.draws, b, *out.shape[1:]).mean(0)
