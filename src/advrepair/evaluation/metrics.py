"""Accuracy with its standard error: every number we report says how uncertain it is."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Accuracy:
    correct: int
    n: int

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
    return Accuracy(int(correct.sum()), int(correct.numel()))


def images_for_stderr(max_stderr: float, p: float = 0.5) -> int:
    """How many images keep the standard error at most ``max_stderr`` at accuracy ``p``."""
    return math.ceil(p * (1 - p) / max_stderr**2)
