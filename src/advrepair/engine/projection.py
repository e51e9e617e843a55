"""Projections onto perturbation budgets and random starts inside them."""
from __future__ import annotations

import math
from typing import Any

import torch

from advrepair.enums import Norm
from advrepair.errors import InputError
from advrepair.seeding import per_image_uniform


def _check_budget(eps: Any, batch: int, name: str = "eps") -> None:
    """A budget is a number >= 0 (inf allowed) or a (B,) tensor; Python-level only, no device sync."""
    if isinstance(eps, torch.Tensor):
        if eps.numel() not in (1, batch):
            raise InputError(f"a tensor {name} must hold one budget per image ({batch}), got shape {tuple(eps.shape)}")
        return
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number or a (B,) tensor, got {type(eps).__name__}") from None
    if math.isnan(value) or value < 0:
        raise InputError(f"{name} must be >= 0, got {eps!r}")


def _check_pair(x: Any, center: Any, x_name: str) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(center, torch.Tensor):
        raise InputError(f"{x_name} and center must be tensors, got {type(x).__name__} and {type(center).__name__}")
    if x.shape != center.shape or x.dim() < 2:
        raise InputError(f"{x_name} and center must have the same (B, ...) shape, got {tuple(x.shape)} and "
                         f"{tuple(center.shape)}")


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


def project(x: torch.Tensor, center: torch.Tensor, eps: float | torch.Tensor, norm: Norm) -> torch.Tensor:
    """Project ``x`` onto ``{z : ||z - center||_norm <= eps} ∩ [0, 1]``.

    For L-inf the two sets are boxes, so clamping is the exact projection. For L2 the ball
    projection is followed by the box clamp, which keeps the result inside both sets (the
    usual practice of PGD implementations; it is not the exact projection onto the
    intersection).
    """
    if not isinstance(norm, Norm):
        norm = Norm.parse(norm)
    _check_pair(x, center, "x")
    _check_budget(eps, x.shape[0])
    delta = x - center
    if norm is Norm.LINF:
        if isinstance(eps, torch.Tensor):
            e = eps.view(-1, *([1] * (x.dim() - 1)))
            delta = torch.maximum(torch.minimum(delta, e), -e)
        else:
            delta = delta.clamp(-eps, eps)
    else:
        radius: torch.Tensor | float = eps.view(-1, *([1] * (x.dim() - 1))) if isinstance(eps, torch.Tensor) else eps
        scale = torch.clamp(radius / (_flat_norm(delta) + 1e-12), max=1.0)
        delta = delta * scale
    return (center + delta).clamp(0.0, 1.0)


def random_start(center: torch.Tensor, eps: float, norm: Norm, uniform: torch.Tensor) -> torch.Tensor:
    """A random point of the budget around ``center`` from uniform numbers of its shape.

    L-inf: uniform in the box. L2: a direction from Gaussian numbers (Box-Muller on the
    given uniforms) and a radius ``eps * u^(1/d)``, uniform in the ball's volume.
    ``uniform`` has shape ``(B, C, H, W)`` for L-inf and ``(B, 2*C*H*W + 1)`` for L2.
    """
    norm = Norm.parse(norm)
    _check_pair(center, center, "center")
    _check_budget(eps, center.shape[0])
    wanted = (center.shape[0], *random_start_numbers(center, norm))
    if not isinstance(uniform, torch.Tensor) or tuple(uniform.shape) != wanted:
        got = tuple(uniform.shape) if isinstance(uniform, torch.Tensor) else type(uniform).__name__
        raise InputError(f"random_start needs uniform numbers of shape {wanted} for {norm.value}, got {got}")
    if norm is Norm.LINF:
        start = center + (2 * uniform.view_as(center) - 1) * eps
    else:
        d = center[0].numel()
        u1, u2, ur = uniform[:, :d], uniform[:, d : 2 * d], uniform[:, 2 * d]
        gauss = torch.sqrt(-2 * torch.log(u1.clamp_min(1e-12))) * torch.cos(2 * torch.pi * u2)
        direction = gauss / (gauss.norm(dim=1, keepdim=True) + 1e-12)
        radius = eps * ur.pow(1.0 / d)
        start = center + (direction * radius[:, None]).view_as(center)
    return project(start, center, eps, norm)


def random_start_numbers(center: torch.Tensor, norm: Norm) -> tuple[int, ...]:
    """The per-image shape of uniform numbers ``random_start`` needs."""
    norm = Norm.parse(norm)
    _check_pair(center, center, "center")
    d = center[0].numel()
    return tuple(center.shape[1:]) if norm is Norm.LINF else (2 * d + 1,)


def seeded_random_start(center: torch.Tensor, eps: float, norm: Norm, seed: int | None, stream: str) -> torch.Tensor:
    """``random_start`` from numbers drawn per image from ``(seed, the image's content, stream)``
    (``seed=None``: torch's global generator): the one seeded random start of every attack and
    defense, so a start never depends on the image's batch-mates."""
    norm = Norm.parse(norm)
    _check_pair(center, center, "center")
    _check_budget(eps, center.shape[0])
    return random_start(center, eps, norm, per_image_uniform(center.detach(), seed, random_start_numbers(center, norm),
                                                             stream))


def random_direction(center: torch.Tensor, norm: Norm, seed: int | None, stream: str) -> torch.Tensor:
    """A per-image seeded direction of unit norm (L-inf: max |t| = 1; L2: uniform on the sphere,
    from Gaussian numbers by Box-Muller), shaped like ``center``: APGD and FAB restart along it."""
    norm = Norm.parse(norm)
    _check_pair(center, center, "center")
    d = center[0].numel()
    if norm is Norm.LINF:
        t = 2 * per_image_uniform(center, seed, (d,), stream) - 1
        t = t / t.abs().amax(1, keepdim=True).clamp_min(1e-12)
    else:
        u = per_image_uniform(center, seed, (2 * d,), stream)
        t = torch.sqrt(-2 * torch.log(u[:, :d].clamp_min(1e-12))) * torch.cos(2 * torch.pi * u[:, d:])
        t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return t.view_as(center)
