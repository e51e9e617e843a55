"""Step rules: how a gradient becomes an update direction."""
from __future__ import annotations

from typing import Callable, Protocol

import torch

from advrepair.enums import Norm
from advrepair.validation import check_positive


class StepRule(Protocol):
    """Maps the gradient at step k to a direction of unit size in the step's norm."""

    def reset(self) -> None: ...

    def direction(self, grad: torch.Tensor) -> torch.Tensor: ...


def _l2_unit(t: torch.Tensor) -> torch.Tensor:
    n = t.flatten(1).norm(dim=1).clamp_min(1e-12)
    return t / n.view(-1, *([1] * (t.dim() - 1)))


class SignStep:
    """``sign(grad)``: steepest ascent under L-inf (FGSM, PGD, BIM)."""

    def reset(self) -> None:
        pass

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.sign()


class L2Step:
    """``grad / ||grad||_2``: steepest ascent under L2."""

    def reset(self) -> None:
        pass

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        return _l2_unit(grad)


class MomentumSignStep:
    """MI-FGSM (Dong et al. 2018): ``g <- mu * g + grad / ||grad||_1``, direction ``sign(g)``."""

    def __init__(self, decay: float = 1.0) -> None:
        self.decay = check_positive(decay, "decay", allow_zero=True)
        self._velocity: torch.Tensor | None = None

    def reset(self) -> None:
        self._velocity = None

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        l1 = grad.abs().flatten(1).sum(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
        g = grad / l1
        self._velocity = g if self._velocity is None else self.decay * self._velocity + g
        return self._velocity.sign()


def default_step_rule(norm: Norm) -> StepRule:
    return SignStep() if Norm.parse(norm) is Norm.LINF else L2Step()


def tanh_surrogate(temperature: float = 1.0) -> "Callable[[torch.Tensor], torch.Tensor]":
    """``g -> tanh(g / temperature)``: a smooth stand-in for ``sign(g)`` in backward passes."""
    check_positive(temperature, "temperature")
    return lambda g: torch.tanh(g / temperature)


def soft_sign_surrogate(temperature: float = 1.0) -> "Callable[[torch.Tensor], torch.Tensor]":
    """``g -> g / (|g| + temperature)``: the soft-sign stand-in for ``sign(g)``."""
    check_positive(temperature, "temperature")
    return lambda g: g / (g.abs() + temperature)


def relative_tanh_surrogate(temperature: float = 1.0) -> "Callable[[torch.Tensor], torch.Tensor]":
    """``g -> tanh(g / (temperature * mean|g|))`` with the mean per image and held constant.

    Input gradients of real networks are tiny and vary by orders of magnitude between
    models and images, so a fixed temperature is either linear (T >> |g|: the surrogate
    is a rescaled gradient) or saturated (T << |g|: its derivative vanishes like sign's).
    Scaling by each image's mean |g| keeps ``temperature`` meaningful on any model:
    about 1 means a typical coordinate sits where tanh bends.
    """
    check_positive(temperature, "temperature")
    def surrogate(g: torch.Tensor) -> torch.Tensor:
        scale = g.detach().abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, *([1] * (g.dim() - 1)))
        return torch.tanh(g / (temperature * scale))
    return surrogate
