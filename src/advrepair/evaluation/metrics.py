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


@dataclass(frozen=True)
class Difference:
    """Row a minus row b on the same images, in accuracy units (multiply by 100 for points).

    ``se_paired`` = sd(d_i) / sqrt(n) of the per-image differences; ``se_unpaired`` =
    sqrt(se_a^2 + se_b^2) (ignores that the images are shared, hence larger when rows agree).
    """

    diff: float
    se_paired: float
    se_unpaired: float
    n: int

    @property
    def exceeds_2se(self) -> bool:
        """|diff| > 2 paired standard errors (0 +- 0 does not count)."""
        return abs(self.diff) > 2 * self.se_paired and self.diff != 0

    @property
    def exceeds_2se_unpaired(self) -> bool:
        return abs(self.diff) > 2 * self.se_unpaired and self.diff != 0


def paired_difference(correct_a: np.ndarray, correct_b: np.ndarray) -> Difference:
    """Accuracy difference of two rows scored on the same images.

    Args:
        correct_a, correct_b: (N,) booleans (or 0/1), per-image correctness of each row.

    Raises:
        InputError: shapes differ, are not 1-D, or are empty.

    Example:
        >>> paired_difference(np.array([1, 1, 0, 1]), np.array([1, 0, 0, 1])).diff
        0.25
    """
    a = np.asarray(correct_a, dtype=float)
    b = np.asarray(correct_b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise InputError("paired_difference needs two non-empty (N,) arrays of the same N, "
                         f"got {a.shape} and {b.shape}")
    n = a.size
    d = a - b
    se_paired = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    pa, pb = a.mean(), b.mean()
    se_unpaired = math.sqrt(pa * (1 - pa) / n + pb * (1 - pb) / n)
    return Difference(float(d.mean()), se_paired, se_unpaired, n)
