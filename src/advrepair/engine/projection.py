"""Projections onto perturbation budgets and random starts inside them."""
from __future__ import annotations

import torch

from advrepair.enums import Norm


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


def project(x: torch.Tensor, center: torch.Tensor, eps: float | torch.Tensor, norm: Norm) -> torch.Tensor:
    """Project ``x`` onto ``{z : ||z - center||_norm <= eps} ∩ [0, 1]``.

    For L-inf the two sets are boxes, so clamping is the exact projection. For L2 the ball
    projection is followed by the box clamp, which keeps the result inside both sets (the
    usual practice of PGD implementations; it is not the exact projection onto the
    intersection).
    """
    delta = x - center
    if norm is Norm.LINF:
        if isinstance(eps, torch.Tensor):
            e = eps.view(-1, *([1] * (x.dim() - 1)))
            delta = torch.maximum(torch.minimum(delta, e), -e)
        else:
            delta = delta.clamp(-eps, eps)
    else:
        e = eps.view(-1, *([1] * (x.dim() - 1))) if isinstance(eps, torch.Tensor) else eps
        scale = torch.clamp(e / (_flat_norm(delta) + 1e-12), max=1.0)
        delta = delta * scale
    return (center + delta).clamp(0.0, 1.0)


def random_start(center: torch.Tensor, eps: float, norm: Norm, uniform: torch.Tensor) -> torch.Tensor:
    """A random point of the budget around ``center`` from uniform numbers of its shape.

    L-inf: uniform in the box. L2: a direction from Gaussian numbers (Box-Muller on the
    given uniforms) and a radius ``eps * u^(1/d)``, uniform in the ball's volume.
    ``uniform`` has shape ``(B, C, H, W)`` for L-inf and ``(B, 2*C*H*W + 1)`` for L2.
    """
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
    d = center[0].numel()
    return tuple(center.shape[1:]) if norm is Norm.LINF else (2 * d + 1,)
