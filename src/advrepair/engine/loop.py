"""The one projected-gradient loop.

Attacks (maximize a classification loss), the self-supervised reverse attack (minimize a
self-supervised loss) and the adversarial transformation (a targeted attack on a small
fixed model) are all this loop with a different loss, sign, budget and step rule.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.utils.checkpoint

from advrepair.engine.projection import _check_budget, _check_pair, project
from advrepair.engine.steps import MomentumSignStep, StepRule, default_step_rule
from advrepair.enums import Norm
from advrepair.errors import InputError
from advrepair.validation import check_int_at_least

#: ``loss_fn(x, step) -> per-image loss of shape (B,)``; ``step`` lets a loss draw the
#: randomness it prepared for that step (augmentations of a reverse attack, say).
LossFn = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass
class LoopTrace:
    """What the loop saw: per-step mean loss, and per-image loss of every iterate if asked."""

    mean_loss: list[float] = field(default_factory=list)
    per_image_loss: list[torch.Tensor] = field(default_factory=list)
    iterates: list[torch.Tensor] = field(default_factory=list)
    gradient_evaluations: int = 0


def projected_gradient(
    start: torch.Tensor,
    loss_fn: LossFn,
    *,
    center: torch.Tensor,
    eps: float | torch.Tensor,
    step_size: float | torch.Tensor,
    steps: int,
    norm: Norm = Norm.LINF,
    maximize: bool = True,
    step_rule: StepRule | None = None,
    trace: LoopTrace | None = None,
    keep_iterates: bool = False,
    surrogate: Callable[[torch.Tensor], torch.Tensor] | None = None,
    checkpoint: bool = False,
    projection: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Run ``steps`` projected gradient steps from ``start`` inside the ball around ``center``.

    Args:
        start: (B, C, H, W) first iterate, already inside the budget.
        loss_fn: per-image loss, shape (B,); its sum is differentiated.
        center: (B, C, H, W) the ball's center (the clean or the received image).
        eps: radius of the ball (a float, or a (B,) tensor for per-image budgets).
        step_size: step length in the norm of the step rule.
        maximize: ascend (attacks) or descend (reverse attacks, purification).
        trace: filled with per-step losses (and iterates if ``keep_iterates``).
        projection: ``(x, center) -> x`` after every step instead of the ``eps``-ball and [0, 1]
            projection (e.g. xiao2020's Eq. 5 clip, whose derivative differs from the exact one).

    Returns:
        (B, C, H, W) the last iterate, inside the budget and [0, 1].

    Gradient through the loop: each step's direction is computed on a detached copy, so
    when ``start`` or ``center`` carry autograd history (and grad mode is on) the result
    keeps the exact derivative of the procedure as run: sign and normalization steps are
    piecewise constant, so only the path through the start, the center and the
    projections remains. With ``surrogate`` (e.g. ``tanh_surrogate``) and an input that
    carries history, each step's direction keeps its forward value (the step rule's) but
    differentiates as ``surrogate(grad)``, with the gradient itself differentiated
    (second order): the full-gradient attack through an unrolled sign-PGD defense.
    ``checkpoint=True`` then recomputes each step in the backward pass instead of keeping
    its second-order graph (torch.utils.checkpoint): memory of one step instead of all K,
    for about one more forward-backward per step; the derivative is unchanged. Needs a
    stateless step rule (sign or L2), since a recomputed step must not advance momentum.
    """
    norm = Norm.parse(norm)
    _check_pair(start, center, "start")
    if not callable(loss_fn):
        raise InputError(f"loss_fn must be callable (x, step) -> (B,) losses, got {type(loss_fn).__name__}")
    steps = check_int_at_least(steps, "steps", 0)
    _check_budget(eps, start.shape[0])
    _check_budget(step_size, start.shape[0], "step_size")
    if isinstance(eps, torch.Tensor) and not bool((eps >= 0).all()):
        raise InputError("eps must be >= 0 for every image (no NaN), got a tensor with negative or NaN entries")
    if surrogate is not None and not callable(surrogate):
        raise InputError(f"surrogate must be None or callable, got {type(surrogate).__name__}")
    rule = step_rule or default_step_rule(norm)
    rule.reset()
    sign = 1.0 if maximize else -1.0
    if isinstance(step_size, torch.Tensor):
        step_size = step_size.view(-1, *([1] * (start.dim() - 1)))
    x = start
    if checkpoint and isinstance(rule, MomentumSignStep):
        raise InputError("checkpoint=True needs a stateless step rule (sign or L2), not momentum")
    if projection is not None and not callable(projection):
        raise InputError(f"projection must be None or callable (x, center) -> x, got {type(projection).__name__}")

    def to_budget(z: torch.Tensor) -> torch.Tensor:
        return project(z, center, eps, norm) if projection is None else projection(z, center)

    for k in range(steps):
        if surrogate is not None and torch.is_grad_enabled() and x.requires_grad:
            def unrolled_step(z: torch.Tensor, k: int = k) -> tuple[torch.Tensor, torch.Tensor]:
                loss = loss_fn(z, k)
                (grad,) = torch.autograd.grad(loss.sum(), z, create_graph=True)
                smooth = surrogate(grad)
                # forward: the real step; backward: the surrogate's derivative (straight-through)
                direction = rule.direction(grad.detach()) + (smooth - smooth.detach())
                return to_budget(z + sign * step_size * direction), loss.detach()

            if checkpoint:
                x_next, loss = torch.utils.checkpoint.checkpoint(unrolled_step, x, use_reentrant=False)
            else:
                x_next, loss = unrolled_step(x)
        else:
            x_req = x.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = loss_fn(x_req, k)
                (grad,) = torch.autograd.grad(loss.sum(), x_req)
            direction = rule.direction(grad).detach()
            x_next = to_budget(x + sign * step_size * direction)
        if trace is not None:
            trace.gradient_evaluations += 1
            trace.mean_loss.append(float(loss.detach().mean()))
            trace.per_image_loss.append(loss.detach())
            if keep_iterates:
                trace.iterates.append(x.detach())
        x = x_next
    return x
