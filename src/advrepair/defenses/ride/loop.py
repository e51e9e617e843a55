"""RIDE's outer loop (Algorithms 1 and 2), shared by the engines: per-step draws from each
image's generator, T checkpoints of K steps, the estimates, the interpolated target and the
per-step record. An engine supplies its training step and its estimate."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

from advrepair.defenses.ride.networks import RideNetSpec, _draw_step
from advrepair.defenses.ride.results import RideResult, _Recorder

if TYPE_CHECKING:
    from advrepair.defenses.ride.defense import RIDE


def run_fit(ride: "RIDE", spec: RideNetSpec, gens: list[torch.Generator], target: torch.Tensor,
            estimate: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
            train_step: Callable[[torch.Tensor], torch.Tensor], noise: torch.Tensor | None,
            draws: torch.Tensor | None, pad: Callable[[torch.Tensor], torch.Tensor], bar: Any,
            clean: torch.Tensor | None, adv: torch.Tensor, trace_eps: torch.Tensor | None,
            trace: bool) -> RideResult:
    """Fit the chunk's networks and collect the result.

    Args:
        gens: the b images' generators; step i's numbers go into rows i < b of ``noise``
            ``(G, 2, n, C, H, W)`` (DAE modes) and ``draws`` (rows of ``dropout_draw_buffer``).
        target: (G, C, H, W), the images (rows past b: the engine's padding).
        estimate: (center (G, C, H, W), noise (G, m, C, H, W) or None) -> (b, C, H, W).
        train_step: one Adam step of every network towards ``target`` with the drawn numbers;
            returns the b losses before the step.
        pad: (b, ...) -> (G, ...).
        trace: record the per-step distances (``trace_eps``: the record's fixed DAE noise).
    """
    b = len(gens)
    _, c, hh, ww = target.shape
    record = _Recorder(ride.total_steps, b, clean, adv) if trace else None
    if record is not None:
        record.add(0, estimate(target, trace_eps), None)
    estimates = []
    loss = torch.full((b,), float("nan"))
    step = 0
    for _t in range(ride.checkpoints):
        for _k in range(ride.iterations):
            for i, g in enumerate(gens):
                _draw_step(g, ride.is_dae, ride.batch, (c, hh, ww), spec, ride.dropout, target.dtype,
                           None if noise is None else noise[i], None if draws is None else draws[i])
            loss = train_step(target)
            step += 1
            bar.update(1)
            if record is not None:
                record.add(step, estimate(target, trace_eps), loss)
        fresh = None
        if ride.is_dae:
            fresh = pad(torch.stack([torch.randn((ride.estimate_samples, c, hh, ww), generator=g, dtype=target.dtype)
                                     for g in gens])).to(target.device)
        current = estimate(target, fresh)
        estimates.append(current)
        alpha = ride.effective_alpha
        if alpha != 1.0:
            target = alpha * target + (1 - alpha) * pad(current)
    return RideResult(estimate=estimates[-1], checkpoints=torch.stack(estimates), final_loss=loss.cpu(),
                      trajectory=record.result() if record is not None else None)
