"""Accuracy with its standard error: every number we report says how uncertain it is."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from advrepair.errors import InputError
from advrepair.validation import check_positive


@dataclass(frozen=True)
class Accuracy:
    correct: int
    n: int

    @classmethod
    def of(cls, correct: "np.ndarray") -> "Accuracy":
        """From a (N,) bool array of per-image correctness (a stored record's, a worst case)."""
        return cls(int(correct.sum()), int(correct.size))

    @property
    def value(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    @property
    def stderr(self) -> float:
        """Binomial standard error sqrt(p (1 - p) / n)."""
        p = self.value
        return math.sqrt(p * (1 - p) / self.n) if self.n else float("nan")


def accuracy_of(correct: torch.Tensor) -> Accuracy:
    """(N,) booleans -> Accuracy."""
    if not isinstance(correct, torch.Tensor) or correct.dtype != torch.bool or correct.dim() != 1:
        got = f"{correct.dtype} of shape {tuple(correct.shape)}" if isinstance(correct, torch.Tensor) else \
            type(correct).__name__
        raise InputError(f"accuracy_of needs a (N,) bool tensor of per-image correctness (e.g. pred == labels), "
                         f"got {got}")
    return Accuracy(int(correct.sum()), int(correct.numel()))


def images_for_stderr(max_stderr: float, p: float = 0.5) -> int:
    """How many images keep the standard error at most ``max_stderr`` at accuracy ``p``."""
    check_positive(max_stderr, "max_stderr")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise InputError(f"p must be an accuracy in [0, 1], got {p!r}")
    return math.ceil(p * (1 - p) / max_stderr**2)
