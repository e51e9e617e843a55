"""Square Attack (Andriushchenko et al. 2020): score-based random search with square updates."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from advrepair.attacks.base import Attack
from advrepair.attacks.losses import margin as margin_loss
from advrepair.enums import Norm
from advrepair.errors import InputError
from advrepair.seeding import image_generators
from advrepair.validation import check_fraction, check_int_at_least
from advrepair.attacks.registry import register_attack

# Iterations (out of 10000 queries) after which the paper halves the square's area fraction p.
_P_CHECKPOINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_SIGN_TRIES = 4  # L-inf: fresh sign draws tried before falling back to the opposite sign
_CHUNK = 128  # iterations of random numbers drawn per image at a time


def pseudo_gaussian(rows: int, cols: int) -> torch.Tensor:
    """(rows, cols) bump that decays in concentric rectangles: value ``sum_{j>m} 1/j^2``.

    ``m`` is the Chebyshev distance from the centre; the sum runs to ``max(rows, cols)//2 + 1``.
    """
    n = max(rows, cols) // 2
    r = (torch.arange(rows) - rows // 2).abs()
    c = (torch.arange(cols) - cols // 2).abs()
    dist = torch.maximum(r[:, None], c[None, :])
    inv_sq = 1.0 / torch.arange(1, n + 2, dtype=torch.float32) ** 2
    tail = inv_sq.flip(0).cumsum(0).flip(0)  # tail[m] = sum_{j=m+1}^{n+1} 1/j^2
    return tail[dist.clamp(max=n)]


def meta_pseudo_gaussian(s: int) -> torch.Tensor:
    """(s, s) unit-norm pattern: two pseudo-Gaussian halves of opposite sign (paper, Sec. 3.2).

    Opposite halves make the update move mass rather than just add it, which the paper found
    to work better for L2 than a single bump.
    """
    top = s // 2
    pattern = torch.zeros(s, s)
    if top > 0:
        pattern[:top] = pseudo_gaussian(top, s)
    pattern[top:] = -pseudo_gaussian(s - top, s)
    return pattern / pattern.norm().clamp_min(1e-12)


@register_attack("square")
class Square(Attack):
    """Square Attack: random search over square-shaped updates, using only the logits.

    Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a query-efficient black-box
    adversarial attack via random search", ECCV 2020. Each query changes a random square
    window whose side covers a fraction ``p`` of the image area, and keeps the change if it
    lowers the loss (margin ``z_y - max_{k != y} z_k`` by default). ``p`` starts at ``p_init``
    and halves at the paper's checkpoints (iterations 10, 50, 200, ..., 8000 of 10000),
    rescaled to ``n_queries``. L-inf updates set the window to ``+-eps`` per channel; L2
    updates move the perturbation mass of a second window into the first as a pair of
    opposite pseudo-Gaussian bumps, keeping ``||delta||_2 = eps``. Only images not yet
    fooled are queried, all in one batch per iteration; every random choice comes from a
    generator seeded by the image, so results do not depend on batch-mates. Gradients are
    never used.

    Each restart spends at most ``n_queries`` forward passes per image (the start counts
    as one); restarts run only on images still correctly classified.

    Shapes: images (B, C, H, W) in [0, 1], labels (B,) -> (B, C, H, W).

    Example:
        >>> adv = Square(model, eps=8/255, n_queries=1000)(images, labels)
    """

    name = "square"

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], eps: float = 8 / 255,
                 norm: str | Norm = Norm.LINF, n_queries: int = 5000, p_init: float = 0.8,
                 n_restarts: int = 1, loss: str = "margin", seed: int | None = 0) -> None:
        super().__init__(model, eps=eps, norm=norm, seed=seed)
        self.n_queries = check_int_at_least(n_queries, "n_queries", 1)
        self.n_restarts = check_int_at_least(n_restarts, "n_restarts", 1)
        if loss not in ("margin", "ce"):
            raise InputError(f"unknown loss {loss!r}; expected 'margin' or 'ce'")
        self.p_init, self.loss_name = check_fraction(p_init, "p_init"), loss

    # -- schedule ----------------------------------------------------------------------
    def p_at(self, iteration: int) -> float:
        """The area fraction at 0-based ``iteration``, the paper's schedule scaled to n_queries."""
        scaled = int(iteration / self.n_queries * 10000)
        return self.p_init / 2 ** sum(scaled > c for c in _P_CHECKPOINTS)

    def _side(self, iteration: int, h: int, w: int) -> int:
        side = int(round(math.sqrt(self.p_at(iteration) * h * w)))
        smallest = 3 if self.norm is Norm.L2 else 1
        return max(min(side, min(h, w) - 1), min(smallest, min(h, w)), 1)

    # -- objective ---------------------------------------------------------------------
    def _score(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fooled, loss to minimize) per image, from one counted forward pass."""
        logits = self.logits(x).float()
        fooled = logits.argmax(1) != labels
        if self.loss_name == "margin":
            loss = -margin_loss(logits, labels)  # z_y - max_{k != y} z_k: negative once fooled
        else:
            loss = -F.cross_entropy(logits, labels, reduction="none")
        return fooled, loss

    # -- attack ------------------------------------------------------------------------
    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            adv = images.clone()
            todo = torch.ones(images.shape[0], dtype=torch.bool, device=images.device)
            for restart in range(self.n_restarts):
                idx = todo.nonzero().flatten()
                if idx.numel() == 0:
                    break
                cand, fooled = self._run(images[idx], labels[idx], restart)
                adv[idx] = cand
                todo[idx[fooled]] = False
            return adv

    def _run(self, x: torch.Tensor, y: torch.Tensor, restart: int) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        gens = image_generators(x, self.seed, f"square-{self.norm.value}-{restart}")
        best = self._init(x, gens)
        fooled, loss = self._score(best, y)
        per_iter = 4 + c + 1 if self.norm is Norm.L2 else 2 + _SIGN_TRIES * c
        # The images still attacked, kept compact and written back only when one is fooled:
        # per-query bookkeeping is what costs at small batches, where the model is cheap.
        act = (~fooled).nonzero().flatten()
        x_a, y_a, best_a, loss_a = x[act], y[act], best[act].contiguous(), loss[act]
        gens_a = [gens[i] for i in act.tolist()]
        numbers = x.new_empty(0)
        # L-inf queries change one window: the query batch is a copy of best_a whose window
        # is written before the forward and rewritten after it (to the kept values), instead
        # of a fresh copy of every image per query
        scratch = best_a.clone()
        for it in range(self.n_queries - 1):
            if act.numel() == 0:
                break
            row = it % _CHUNK
            if row == 0:  # the next chunk for every image still attacked, each from its own stream
                numbers = torch.stack([torch.rand(_CHUNK, per_iter, generator=g) for g in gens_a]).to(x.device)
            side = self._side(it, h, w)
            if self.norm is Norm.LINF:
                index, old, window = self._linf_window(x_a, best_a, numbers[:, row], side)
                scratch.flatten(2).scatter_(2, index, window)
                new_fooled, new_loss = self._score(scratch, y_a)
                take = new_fooled | (new_loss < loss_a)
                kept = torch.where(take.view(-1, 1, 1), window, old)
                best_a.flatten(2).scatter_(2, index, kept)
                scratch.flatten(2).scatter_(2, index, kept)
            else:
                cand = self._l2_candidate(x_a, best_a, numbers[:, row], side)
                new_fooled, new_loss = self._score(cand, y_a)
                take = new_fooled | (new_loss < loss_a)
                best_a = torch.where(take.view(-1, 1, 1, 1), cand, best_a)
            loss_a = torch.where(take, new_loss, loss_a)
            if bool(new_fooled.any()):
                best[act], loss[act], fooled[act] = best_a, loss_a, new_fooled
                keep = ~new_fooled
                act, x_a, y_a, best_a, loss_a, numbers, scratch = (
                    t[keep] for t in (act, x_a, y_a, best_a, loss_a, numbers, scratch))
                gens_a = [g for g, k in zip(gens_a, keep.tolist()) if k]
        best[act], loss[act] = best_a, loss_a
        return best, fooled

    def _init(self, x: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.norm is Norm.LINF:
            # vertical stripes of +-eps: the paper's start, already a strong L-inf perturbation
            u = torch.stack([torch.rand(c, 1, w, generator=g) for g in gens]).to(x.device)
            return (x + self.eps * torch.where(u < 0.5, -1.0, 1.0)).clamp(0, 1)
        tile = max(min(h, w) // 5, 1)
        oh, ow = (h % tile) // 2, (w % tile) // 2
        nh, nw = (h - oh) // tile, (w - ow) // tile
        u = torch.stack([torch.rand(nh, nw, c, generator=g) for g in gens]).to(x.device)
        signs = torch.where(u < 0.5, -1.0, 1.0)  # (b, nh, nw, c)
        pattern = meta_pseudo_gaussian(tile).to(x.device)
        delta = torch.zeros_like(x)
        for i in range(nh):
            for j in range(nw):
                r, q = oh + i * tile, ow + j * tile
                delta[:, :, r:r + tile, q:q + tile] = signs[:, i, j, :, None, None] * pattern
        return self._apply_l2(x, delta)

    def _apply_l2(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return (x + delta * (self.eps / norm)).clamp(0, 1)

    @staticmethod
    def _window(pos: torch.Tensor, s: int, n: int) -> torch.Tensor:
        """(b, n) mask of the rows (or columns) ``pos .. pos+s-1``."""
        ar = torch.arange(n, device=pos.device)
        return (ar >= pos[:, None]) & (ar < pos[:, None] + s)

    def _linf_window(self, x: torch.Tensor, best: torch.Tensor, u: torch.Tensor,
                     s: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A query's square: (flat pixel index (b, c, s*s), best's values there, the new values).

        Only the window is computed: a query changes nothing outside its square.
        """
        b, c, h, w = x.shape
        vh = (u[:, 0] * (h - s + 1)).long().clamp(max=h - s)
        vw = (u[:, 1] * (w - s + 1)).long().clamp(max=w - s)
        offsets = torch.arange(s, device=x.device)
        square = offsets[:, None] * w + offsets  # (s, s) flat offsets of the square from its corner
        index = (vh * w + vw).view(b, 1, 1) + square.view(1, 1, s * s)
        index = index.expand(b, c, s * s)
        x_win = x.flatten(2).gather(2, index)  # (b, c, s*s)
        best_win = best.flatten(2).gather(2, index)
        signs = torch.where(u[:, 2:].view(b, _SIGN_TRIES, c) < 0.5, -1.0, 1.0)
        tries = (x_win[:, None] + self.eps * signs[..., None]).clamp(0, 1)  # (b, T, c, s*s)
        # a draw equal to what the window already holds would waste a query (likely with one
        # channel): take the first draw that changes something, else the opposite of the first,
        # which always differs because eps > 0 (appended as an always-changing last draw)
        changed = (tries - best_win[:, None]).abs().flatten(2).amax(2) > 1e-7
        changed = torch.cat([changed, changed.new_ones(b, 1)], 1)
        first = changed.byte().argmax(1)  # the first True
        pick = torch.cat([signs, -signs[:, :1]], 1).gather(1, first.view(b, 1, 1).expand(b, 1, c)).squeeze(1)
        return index, best_win, (x_win + self.eps * pick[..., None]).clamp(0, 1)

    def _l2_candidate(self, x: torch.Tensor, best: torch.Tensor, u: torch.Tensor, s: int) -> torch.Tensor:
        b, c, h, w = x.shape
        delta = best - x
        pos = [(u[:, k] * (n - s + 1)).long().clamp(max=n - s) for k, n in enumerate((h, w, h, w))]
        m1 = (self._window(pos[0], s, h)[:, :, None] & self._window(pos[1], s, w)[:, None, :])[:, None]
        m2 = (self._window(pos[2], s, h)[:, :, None] & self._window(pos[3], s, w)[:, None, :])[:, None]
        rows = pos[0][:, None] + torch.arange(s, device=x.device)  # (b, s)
        cols = pos[1][:, None] + torch.arange(s, device=x.device)
        bi = torch.arange(b, device=x.device)[:, None, None]
        old_w1 = delta[bi, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (b, c, s, s)

        pattern = meta_pseudo_gaussian(s).to(x.device)
        flip = (u[:, 4] < 0.5).view(b, 1, 1, 1)  # random orientation of the two halves
        eta = torch.where(flip, pattern.t().expand(b, 1, s, s), pattern.expand(b, 1, s, s))
        rho = torch.where(u[:, 5:5 + c] < 0.5, -1.0, 1.0).view(b, c, 1, 1)

        # per channel: the mass of W1 and W2 plus an equal share of the unused budget is put
        # into W1 along (old W1 direction + random bump); W2 is emptied. This keeps ||delta||
        # at eps while moving perturbation between regions.
        unused_sq = (self.eps ** 2 - delta.flatten(1).pow(2).sum(1)).clamp_min(0).view(b, 1, 1, 1)
        union_sq = (delta * (m1 | m2)).pow(2).sum((2, 3), keepdim=True)  # (b, c, 1, 1)
        old_norm = old_w1.pow(2).sum((2, 3), keepdim=True).sqrt()
        direction = rho * eta + old_w1 / (old_norm + 1e-12)
        direction = direction / direction.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        new_w1 = direction * (union_sq + unused_sq / c).sqrt()

        delta = delta.masked_fill(m2, 0.0)
        delta[bi, :, rows[:, :, None], cols[:, None, :]] = new_w1.permute(0, 2, 3, 1)
        return self._apply_l2(x, delta)

    def params(self) -> dict[str, Any]:
        p = super().params()
        p.update(n_queries=self.n_queries, p_init=self.p_init, n_restarts=self.n_restarts,
                 loss=self.loss_name)
        return p
