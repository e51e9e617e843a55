"""The batched engine: B images, B networks stacked as one grouped convolution, per-model Adam."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from advrepair.defenses.ride.loop import run_fit
from advrepair.defenses.ride.networks import (DIP_NOISE_SCALE, GROUP_MULTIPLE, RideNetSpec, _draw_init,
                                              _dropout_masks, dropout_draw_buffer, dropout_units)
from advrepair.defenses.ride.results import RideResult

if TYPE_CHECKING:
    from advrepair.defenses.ride.defense import RIDE


class _StackedAdam:
    """Adam (Kingma & Ba) with L2 weight decay, element-wise on stacked per-model tensors.

    Element-wise, so on stacked weights it is exactly independent Adam per model; the update
    follows the same operation order as ``torch.optim.Adam(foreach=False)``.
    """

    def __init__(self, params: list[torch.Tensor], lr: float, weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = params
        self.lr, self.wd, self.betas, self.eps = lr, weight_decay, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        self.t += 1
        b1, b2 = self.betas
        bc1 = 1 - b1 ** self.t
        bc2_sqrt = (1 - b2 ** self.t) ** 0.5
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            if self.wd != 0:
                g = g.add(p, alpha=self.wd)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / bc1)


def _grouped_forward(z: torch.Tensor, params: list[torch.Tensor], groups: int, spec: RideNetSpec,
                     masks: list[torch.Tensor] | None) -> torch.Tensor:
    """B networks at once. z: (n, B*C, H, W) -> (n, B*C, H, W); params stacked per layer."""
    h = z
    depth = len(params) // 2
    m = 0
    for k in range(1, depth + 1):
        h = F.conv2d(h, params[2 * k - 2], params[2 * k - 1], padding=1, groups=groups)
        if k == depth:
            break
        h = F.relu(h)
        if masks and k in spec.dropout_layers:
            h = h * masks[m]
            m += 1
    return torch.sigmoid(h)


def _to_grouped(x: torch.Tensor) -> torch.Tensor:
    """(B, n, C, H, W) -> (n, B*C, H, W), channels-last."""
    b, n, c, hh, ww = x.shape
    return x.transpose(0, 1).reshape(n, b * c, hh, ww).contiguous(memory_format=torch.channels_last)


def _from_grouped(x: torch.Tensor, b: int) -> torch.Tensor:
    """(n, B*C, H, W) -> (B, n, C, H, W)."""
    n, bc, hh, ww = x.shape
    return x.reshape(n, b, bc // b, hh, ww).transpose(0, 1)


# --------------------------------------------------------------------------------------------
# The defense
# --------------------------------------------------------------------------------------------


def fit_chunk(ride: "RIDE", x: torch.Tensor, spec: RideNetSpec, gens: list[torch.Generator],
               clean: torch.Tensor | None, adv: torch.Tensor,
               trace_gens: list[torch.Generator] | None, bar: Any) -> RideResult:
    b, c, hh, ww = x.shape
    g_count = -(-b // GROUP_MULTIPLE) * GROUP_MULTIPLE  # networks run, padded (see module doc)
    dev, dt = x.device, x.dtype
    n, m_est, sigma = ride.batch, ride.estimate_samples, ride.sigma

    def padded(t: torch.Tensor) -> torch.Tensor:
        """(b, ...) -> (g_count, ...) with zero rows for the padding networks."""
        return torch.cat([t, t.new_zeros((g_count - b, *t.shape[1:]))]) if g_count > b else t

    inits = [_draw_init(g, spec, c, dt) for g in gens]
    params = []
    for j in range(len(inits[0])):
        stacked = torch.cat([init[j] for init in inits])
        stacked = padded(stacked.view(b, -1, *stacked.shape[1:])).flatten(0, 1).to(dev)
        if stacked.dim() == 4:
            stacked = stacked.contiguous(memory_format=torch.channels_last)
        params.append(stacked.requires_grad_(True))
    opt = _StackedAdam(params, ride.lr, ride.weight_decay)
    z0 = z0_eval = None
    if not ride.is_dae:
        z0 = torch.stack([torch.rand((1, c, hh, ww), generator=g, dtype=dt) for g in gens])
        z0 = _to_grouped(padded(DIP_NOISE_SCALE * z0).to(dev))
        z0_eval, z0 = z0, z0.expand(n, -1, -1, -1)
    trace_eps = None
    if trace_gens is not None and ride.is_dae:
        trace_eps = padded(torch.stack([torch.randn((m_est, c, hh, ww), generator=g, dtype=dt)
                                        for g in trace_gens])).to(dev)

    def estimate(center: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
        # center (G, C, H, W); eps (G, m, C, H, W) for DAE; returns (b, C, H, W)
        with torch.no_grad():
            if ride.is_dae:
                assert eps is not None  # the DAE estimate averages over noise draws
                out = _grouped_forward(_to_grouped(center[:, None] + sigma * eps), params, g_count, spec, None)
                return _from_grouped(out, g_count)[:b].mean(1)
            assert z0_eval is not None  # the DIP input
            return _from_grouped(_grouped_forward(z0_eval, params, g_count, spec, None), g_count)[:b, 0]

    # per-step draws are written straight into these buffers; padding rows stay zero
    noise = torch.zeros((g_count, 2, n, c, hh, ww), dtype=dt) if ride.is_dae else None
    draws = (dropout_draw_buffer(g_count, dropout_units(spec, n, hh, ww), ride.dropout, dt)
             if ride.dropout > 0 and spec.dropout_layers else None)
    mask_buffer = (torch.empty((n, len(spec.dropout_layers), hh, ww, g_count, spec.width), dtype=dt, device=dev)
                   if draws is not None else None)

    def train_step(target: torch.Tensor) -> torch.Tensor:
        masks = None
        if draws is not None:
            masks = _dropout_masks(draws, ride.dropout, spec, n, hh, ww, dev, dt, mask_buffer)
        if noise is not None:
            noise_d = noise.to(dev)
            inp = _to_grouped(target[:, None] + sigma * noise_d[:, 0])
            tgt = target[:, None] + sigma * noise_d[:, 1]
        else:
            assert z0 is not None  # the DIP input, drawn above
            inp = z0
            tgt = target[:, None].expand(g_count, n, c, hh, ww)
        out = _from_grouped(_grouped_forward(inp, params, g_count, spec, masks), g_count)
        per_image = (out[:b] - tgt[:b]).pow(2).mean(dim=(1, 2, 3, 4))
        grads = torch.autograd.grad(per_image.sum(), params)
        opt.step(list(grads))
        return per_image.detach()

    return run_fit(ride, spec, gens, padded(x), estimate, train_step, noise, draws, padded, bar, clean, adv,
                   trace_eps, trace_gens is not None)
