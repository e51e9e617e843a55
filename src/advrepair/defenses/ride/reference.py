"""The reference path: one image at a time, an ordinary nn.Conv2d network and torch.optim.Adam."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from advrepair.defenses.ride.networks import DIP_NOISE_SCALE, RideNetSpec, RideNetwork, _draw_init, _draw_step, _dropout_masks
from advrepair.defenses.ride.results import RideResult, _Recorder

if TYPE_CHECKING:
    from advrepair.defenses.ride.defense import RIDE


def fit_one(ride: "RIDE", x: torch.Tensor, spec: RideNetSpec, gen: torch.Generator,
             clean: torch.Tensor | None, adv: torch.Tensor,
             trace_gen: torch.Generator | None) -> RideResult:
    c, hh, ww = x.shape
    dev, dt = x.device, x.dtype
    n, m_est, sigma = ride.batch, ride.estimate_samples, ride.sigma
    net = RideNetwork(spec, c, ride.dropout).to(dev, dt)
    net.load_flat([p.to(dev) for p in _draw_init(gen, spec, c, dt)])
    opt = torch.optim.Adam(net.parameters(), lr=ride.lr, weight_decay=ride.weight_decay, foreach=False)
    z0 = None
    if not ride.is_dae:
        z0 = (DIP_NOISE_SCALE * torch.rand((1, c, hh, ww), generator=gen, dtype=dt)).to(dev)
    trace_eps = None
    if trace_gen is not None and ride.is_dae:
        trace_eps = torch.randn((m_est, c, hh, ww), generator=trace_gen, dtype=dt).to(dev)

    def estimate(center: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            if ride.is_dae:
                assert eps is not None
                return net(center[None] + sigma * eps).mean(0)
            assert z0 is not None
            return net(z0)[0]

    record = (_Recorder(ride.total_steps, 1, None if clean is None else clean[None], adv[None])
              if trace_gen is not None else None)
    target = x
    if record is not None:
        record.add(0, estimate(target, trace_eps)[None], None)
    ests = []
    loss = torch.tensor(float("nan"))
    step = 0
    for _t in range(ride.checkpoints):
        for _k in range(ride.iterations):
            noise, draws = _draw_step(gen, ride.is_dae, n, (c, hh, ww), spec, ride.dropout, dt)
            masks = None
            if draws is not None:
                masks = _dropout_masks(draws[None], ride.dropout, spec, n, hh, ww, dev, dt)
            if ride.is_dae:
                assert noise is not None
                inp = target[None] + sigma * noise[0].to(dev)
                tgt = target[None] + sigma * noise[1].to(dev)
            else:
                assert z0 is not None
                inp = z0.expand(n, -1, -1, -1)
                tgt = target[None].expand(n, -1, -1, -1)
            opt.zero_grad(set_to_none=True)
            loss_t = F.mse_loss(net(inp, masks), tgt)
            loss_t.backward()
            opt.step()
            loss = loss_t.detach()
            step += 1
            if record is not None:
                record.add(step, estimate(target, trace_eps)[None], loss[None])
        eps_e = None
        if ride.is_dae:
            eps_e = torch.randn((m_est, c, hh, ww), generator=gen, dtype=dt).to(dev)
        est = estimate(target, eps_e)
        ests.append(est)
        alpha = ride.effective_alpha
        target = target if alpha == 1.0 else alpha * target + (1 - alpha) * est
    return RideResult(estimate=ests[-1], checkpoints=torch.stack(ests), final_loss=loss.cpu(),
                      trajectory=record.result() if record is not None else None)
