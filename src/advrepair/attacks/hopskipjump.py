"""HopSkipJump (Chen, Jordan & Wainwright 2020): decision-based attack from hard labels only."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from advrepair.attacks.base import Attack
from advrepair.seeding import image_generators
from advrepair.validation import check_int_at_least
from advrepair.enums import Norm
from advrepair.errors import InputError
from advrepair.validation import check_positive
from advrepair.attacks.registry import register_attack

_STEP_HALVINGS = 20  # geometric step-size search gives up (takes no step) after this many
_ROWS_PER_PASS = 1 << 22  # floats per batched forward when estimating gradients (memory bound)


@register_attack("hopskipjump")
class HopSkipJump(Attack):
    """HopSkipJump: boundary walk driven by Monte-Carlo gradient-direction estimates.

    Chen, Jordan, Wainwright, "HopSkipJumpAttack: a query-efficient decision-based attack",
    IEEE S&P 2020. Only the predicted class (argmax of the logits) is used. Start: uniform
    noise images are tried until one is misclassified (``init_size`` tries, seeded per
    image). Each of ``steps`` iterations then (1) binary-searches between the original and
    the current adversarial to the boundary (L2: blending; L-inf: shrinking an L-inf box),
    to precision ``theta = gamma / d^1.5`` (L2) or ``gamma / d^2`` (L-inf); (2) estimates the
    boundary's normal from ``init_num_evals * sqrt(t)`` (at most ``max_num_evals``) random
    probes of radius ``delta_t``; (3) steps along it (its sign for L-inf) with the geometric
    step size ``dist / sqrt(t)``, halved until the point is adversarial again.

    HopSkipJump minimizes the distance; the base class clips the result to ``eps`` so the
    attack reports success within the budget. ``max_queries`` is a hard cap on forward
    passes per image: an image stops iterating once a further iteration might exceed it.
    Images without a starting adversarial (or misclassified already) are returned as
    they are (the latter are adversarial already).

    Shapes: images (B, C, H, W) in [0, 1], labels (B,) -> (B, C, H, W).

    Example:
        >>> adv = HopSkipJump(model, eps=0.5, norm="L2", steps=40, max_queries=10000)(images, labels)
    """

    name = "hopskipjump"

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], eps: float = 0.5,
                 norm: str | Norm = Norm.L2, steps: int = 50, max_queries: int = 10000,
                 init_num_evals: int = 100, max_num_evals: int = 10000, init_size: int = 100,
                 gamma: float = 1.0, seed: int | None = 0) -> None:
        super().__init__(model, eps=eps, norm=norm, seed=seed)
        self.steps = check_int_at_least(steps, "steps", 0)
        self.max_queries = check_int_at_least(max_queries, "max_queries", 1)
        self.init_num_evals = check_int_at_least(init_num_evals, "init_num_evals", 1)
        self.max_num_evals = check_int_at_least(max_num_evals, "max_num_evals", 1)
        self.init_size = check_int_at_least(init_size, "init_size", 1)
        if self.max_num_evals < self.init_num_evals:
            raise InputError(f"max_num_evals ({max_num_evals}) must be >= init_num_evals ({init_num_evals})")
        self.gamma = check_positive(gamma, "gamma")

    # -- pieces --------------------------------------------------------------------------
    def _fooled(self, x: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor,
                idx: torch.Tensor) -> torch.Tensor:
        """Hard-label decision for images ``idx``; counts one query for each."""
        queries[idx] += 1
        with torch.no_grad():
            return self.logits(x).argmax(1) != labels

    def _distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        flat = (a - b).flatten(1)
        return flat.abs().amax(1) if self.norm is Norm.LINF else flat.norm(dim=1)

    def _toward(self, x: torch.Tensor, adv: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """L2: the blend at ``level`` in [0, 1]; L-inf: ``adv`` clipped to the L-inf box of radius ``level``.

        Both shrink toward ``x`` as ``level`` falls, so a binary search on ``level`` finds the boundary.
        """
        lv = level.view(-1, *([1] * (x.dim() - 1)))
        if self.norm is Norm.L2:
            return (1 - lv) * x + lv * adv
        return torch.minimum(torch.maximum(adv, x - lv), x + lv)

    def _binary_search(self, x: torch.Tensor, adv: torch.Tensor, y: torch.Tensor, queries: torch.Tensor,
                       idx: torch.Tensor, theta: float) -> torch.Tensor:
        """The adversarial side of the boundary between ``x`` and ``adv`` (which must fool)."""
        high = torch.ones(x.shape[0], device=x.device) if self.norm is Norm.L2 else self._distance(adv, x)
        low = torch.zeros_like(high)
        # every image needs the same number of halvings: the L2 interval starts at 1 and the
        # L-inf one at dist with tolerance dist * theta (dist <= 1)
        for _ in range(max(math.ceil(math.log2(1 / theta)), 1)):
            mid = (high + low) / 2
            fooled = self._fooled(self._toward(x, adv, mid), y, queries, idx)
            high = torch.where(fooled, mid, high)
            low = torch.where(fooled, low, mid)
        return self._toward(x, adv, high)

    def _gradient_direction(self, boundary: torch.Tensor, y: torch.Tensor, delta: torch.Tensor,
                            n_evals: int, gens: list[torch.Generator], idx: torch.Tensor,
                            queries: torch.Tensor) -> torch.Tensor:
        """Unit estimate of the boundary normal pointing to the adversarial side, (n, C, H, W)."""
        n, d = boundary.shape[0], boundary[0].numel()
        per_pass = max(1, _ROWS_PER_PASS // (n_evals * d))
        out = torch.empty(n, d, device=boundary.device)
        for start in range(0, n, per_pass):
            part = slice(start, min(n, start + per_pass))
            owners = idx[part].tolist()
            if self.norm is Norm.L2:
                probes = torch.stack([torch.randn(n_evals, d, generator=gens[i]) for i in owners])
            else:
                probes = torch.stack([torch.rand(n_evals, d, generator=gens[i]) for i in owners]) * 2 - 1
            probes = probes.to(boundary.device)
            probes = probes / probes.norm(dim=2, keepdim=True).clamp_min(1e-12)
            base = boundary[part].flatten(1)[:, None]
            dl = delta[part].view(-1, 1, 1)
            moved = (base + dl * probes).clamp(0, 1)
            probes = (moved - base) / dl  # the probe actually applied after the box clamp
            k = moved.shape[0]
            queries[idx[part]] += n_evals
            flat = moved.view(k * n_evals, *boundary.shape[1:])
            chunk = max(1, _ROWS_PER_PASS // d)
            with torch.no_grad():
                fooled = torch.cat([self.logits(flat[i:i + chunk]).argmax(1)
                                    for i in range(0, flat.shape[0], chunk)])
            sign = (fooled.view(k, n_evals) != y[part, None]).float() * 2 - 1
            mean = sign.mean(1, keepdim=True)
            # the mean sign is a baseline that reduces variance; when all probes agree there is
            # nothing to centre and the mean direction (signed) is the best guess
            centred = torch.where(mean.abs() == 1, sign, sign - mean)
            out[part] = (centred[..., None] * probes).mean(1)
        out = out / out.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return out.view_as(boundary)

    # -- attack --------------------------------------------------------------------------
    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n, d = images.shape[0], images[0].numel()
        queries = torch.zeros(n, dtype=torch.long, device=images.device)
        everyone = torch.arange(n, device=images.device)
        adv = images.clone()
        clean_fooled = self._fooled(images, labels, queries, everyone)
        theta = self.gamma / (d ** 1.5 if self.norm is Norm.L2 else d ** 2)
        bs_cost = max(math.ceil(math.log2(1 / theta)), 1)
        gens = image_generators(images, self.seed, f"hsj-{self.norm.value}")

        # start: uniform noise until misclassified, leaving room for the first binary search
        found = clean_fooled.clone()
        searching = ~clean_fooled
        for _ in range(self.init_size):
            searching &= queries + 1 + bs_cost <= self.max_queries
            idx = searching.nonzero().flatten()
            if idx.numel() == 0:
                break
            noise = torch.stack([torch.rand(images.shape[1:], generator=gens[i]) for i in idx.tolist()])
            noise = noise.to(images.device)
            hit = self._fooled(noise, labels[idx], queries, idx)
            adv[idx[hit]] = noise[hit]
            found[idx[hit]] = True
            searching[idx[hit]] = False

        walk = (found & ~clean_fooled).nonzero().flatten()
        if walk.numel() == 0:
            return adv
        x, y = images[walk], labels[walk]
        cur = self._binary_search(x, adv[walk], y, queries, walk, theta)
        dist = self._distance(cur, x)

        for t in range(1, self.steps + 1):
            n_evals = min(int(self.init_num_evals * math.sqrt(t)), self.max_num_evals)
            live = queries[walk] + n_evals + _STEP_HALVINGS + bs_cost <= self.max_queries
            sel = live.nonzero().flatten()
            if sel.numel() == 0:
                break
            idx = walk[sel]
            xs, ys, bnd, ds = x[sel], y[sel], cur[sel], dist[sel]
            if t == 1:
                delta = torch.full_like(ds, 0.1)  # no distance scale yet: the paper's first radius
            else:
                delta = ds * theta * (math.sqrt(d) if self.norm is Norm.L2 else d)
            direction = self._gradient_direction(bnd, ys, delta.clamp_min(1e-12), n_evals, gens, idx, queries)
            if self.norm is Norm.LINF:
                direction = direction.sign()
            step = ds / math.sqrt(t)
            moved = bnd.clone()
            pending = torch.ones(sel.numel(), dtype=torch.bool, device=x.device)
            for _ in range(_STEP_HALVINGS):
                p = pending.nonzero().flatten()
                if p.numel() == 0:
                    break
                trial = (bnd[p] + step[p].view(-1, 1, 1, 1) * direction[p]).clamp(0, 1)
                ok = self._fooled(trial, ys[p], queries, idx[p])
                moved[p[ok]] = trial[ok]
                pending[p[ok]] = False
                step[p[~ok]] /= 2
            # the boundary point itself fools, so images whose step never did stay put
            new = self._binary_search(xs, moved, ys, queries, idx, theta)
            cur[sel] = new
            dist[sel] = self._distance(new, xs)
        adv[walk] = cur
        return adv

    def params(self) -> dict[str, Any]:
        p = super().params()
        p.update(steps=self.steps, max_queries=self.max_queries, init_num_evals=self.init_num_evals,
                 max_num_evals=self.max_num_evals, init_size=self.init_size, gamma=self.gamma)
        return p
