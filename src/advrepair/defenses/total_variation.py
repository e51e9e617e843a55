"""Total-variation minimization defense (Guo, Rana, Cisse & van der Maaten 2018, "Countering
adversarial images using input transformations", Sec. 3.3), with two ROF solvers.

The defense replaces an image x by the solution of isotropic ROF denoising
(Rudin, Osher & Fatemi 1992), per channel c:

    u = argmin_u  1/2 * sum_ij m_ij (u_ij - x_ij)^2  +  weight * TV(u),
    TV(u) = sum_ij sqrt((D_h u)_ij^2 + (D_v u)_ij^2)

with forward differences D and Neumann boundary (the difference past the last row/column is
0). ``m`` is 1 everywhere for plain TV denoising; Guo et al.'s pixel dropout makes it a
random Bernoulli(keep_prob) mask, so the solution is the "simplest" image that agrees with a
random subset of the pixels.

Solvers:
- ``"chambolle"``: Chambolle 2004 ("An algorithm for total variation minimization and
  applications"), the dual projection iteration (his Eq. 9 and Theorem 3.1):
      p <- (p + tau * grad(div p - x / weight)) / (1 + tau * |grad(div p - x / weight)|),
      u = x - weight * div p.
  tau = 0.25 (Chambolle proves convergence for tau <= 1/8 and reports 1/4 works in
  practice, as here). Only for m = 1 (no dropout).
- ``"bregman"``: split Bregman (Goldstein & Osher 2009, "The split Bregman method for
  L1-regularized problems", Sec. 4.1, isotropic ROF) with mu = 1 / weight and lambda = 2 mu:
      u <- one Gauss-Seidel sweep on (mu M + lambda D^T D) u = mu M x + lambda D^T (d - b),
      d <- shrink(D u + b, 1 / lambda)   (isotropic shrinkage),
      b <- b + D u - d.
  Handles the dropout mask M = diag(m).

Deviations, on purpose:
- The Gauss-Seidel sweep is red-black (checkerboard) ordered, not lexicographic, so it
  vectorizes over pixels and images in torch.
- TV is per channel (channel-wise ROF, as scikit-image's Chambolle with ``channel_axis``),
  not a vectorial TV coupling the channels.
- Guo et al. write the dropout data term as ||(1 - X) * (z - x)||_2 (a norm, not halved
  squared); we use the ROF-form 1/2 ||m * (u - x)||^2 so both terms stay those of ROF. The
  mask drops whole pixels (every channel), drawn per image from its content and ``seed``.
  Guo et al.'s values of the weight and drop rate are not restated here; the defaults are ours.
- Iterations stop per image once max |u_k - u_{k-1}| < tol (or after ``max_iter``); an
  image's iterate count never depends on its batch-mates.
- The output is clamped to [0, 1] (the exact minimizer already lies in [min x, max x]).

The forward keeps autograd's graph through the iterations (an unrolled, exact gradient);
BPDA with the identity is the usual way to attack it (Athalye et al. 2018).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from advrepair.errors import InputError
from advrepair.seeding import per_image_uniform
from advrepair.validation import check_images, check_int_at_least, check_positive
from advrepair.defenses.registry import register_defense

SOLVERS = ("chambolle", "bregman")


def _grad(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences along W (h) and H (v), zero past the last column/row."""
    return F.pad(torch.diff(u, dim=-1), (0, 1)), F.pad(torch.diff(u, dim=-2), (0, 0, 0, 1))


def _div(ph: torch.Tensor, pv: torch.Tensor) -> torch.Tensor:
    """Discrete divergence, the negative adjoint of ``_grad`` (Chambolle 2004, Sec. 2):
    backward differences of p with p's last column (row) taken as 0."""
    ph = ph[..., :, :-1]
    pv = pv[..., :-1, :]
    return (F.pad(ph, (0, 1)) - F.pad(ph, (1, 0))) + (F.pad(pv, (0, 0, 0, 1)) - F.pad(pv, (0, 0, 1, 0)))


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Isotropic TV of each image, summed over channels: (B, C, H, W) -> (B,).

    Example:
        >>> float(total_variation(torch.zeros(1, 1, 4, 4)))
        0.0
    """
    gh, gv = _grad(images)
    return torch.sqrt(gh ** 2 + gv ** 2).sum((1, 2, 3))


def rof_energy(u: torch.Tensor, x: torch.Tensor, weight: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """1/2 * sum m (u - x)^2 + weight * TV(u) per image: (B, C, H, W) x 2 -> (B,)."""
    diff = (u - x) ** 2 if mask is None else mask * (u - x) ** 2
    return 0.5 * diff.sum((1, 2, 3)) + weight * total_variation(u)


def _freeze(active: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(active[:, None, None, None], new, old)


def _changed(new: torch.Tensor, old: torch.Tensor, tol: float) -> torch.Tensor:
    return (new - old).detach().abs().amax((1, 2, 3)) >= tol


def tv_chambolle(x: torch.Tensor, weight: float, max_iter: int = 200, tol: float = 1e-4,
                 tau: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """ROF denoising by Chambolle's projection algorithm, batched.

    Returns (u, iterations): u of x's shape (B, C, H, W), iterations (B,) per image.

    Example:
        >>> u, n = tv_chambolle(torch.rand(2, 1, 16, 16), weight=0.1)
    """
    if weight == 0:
        return x, torch.zeros(x.shape[0], dtype=torch.long)
    ph = torch.zeros_like(x)
    pv = torch.zeros_like(x)
    u = x
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    iters = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for _ in range(max_iter):
        gh, gv = _grad(_div(ph, pv) - x / weight)
        norm = 1 + tau * torch.sqrt(gh ** 2 + gv ** 2)
        new_ph, new_pv = (ph + tau * gh) / norm, (pv + tau * gv) / norm
        new_u = x - weight * _div(new_ph, new_pv)
        ph, pv = _freeze(active, new_ph, ph), _freeze(active, new_pv, pv)
        still = active & _changed(new_u, u, tol)
        u = _freeze(active, new_u, u)
        iters = iters + active.long()
        active = still
        if not bool(active.any()):
            break
    return u, iters.cpu()


def _neighbour_sum(u: torch.Tensor) -> torch.Tensor:
    """Sum of the 4-neighbours inside the image (Neumann boundary)."""
    return (F.pad(u[..., :, :-1], (1, 0)) + F.pad(u[..., :, 1:], (0, 1))
            + F.pad(u[..., :-1, :], (0, 0, 1, 0)) + F.pad(u[..., 1:, :], (0, 0, 0, 1)))


def tv_bregman(x: torch.Tensor, weight: float, mask: torch.Tensor | None = None, max_iter: int = 200,
               tol: float = 1e-4, sweeps: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """ROF denoising (optionally with a data mask) by split Bregman, batched.

    Args:
        x: (B, C, H, W) images.
        weight: TV weight (mu = 1 / weight, lambda = 2 mu).
        mask: (B, 1 or C, H, W) in {0, 1}: which pixels the data term sees; None = all.
        sweeps: red-black Gauss-Seidel sweeps per outer iteration (Goldstein & Osher: 1).

    Returns (u, iterations): u (B, C, H, W), iterations (B,) per image.

    Example:
        >>> u, n = tv_bregman(torch.rand(2, 3, 16, 16), weight=0.1)
    """
    if weight == 0:
        return x, torch.zeros(x.shape[0], dtype=torch.long)
    mu = 1.0 / weight
    lam = 2.0 * mu
    m = torch.ones_like(x) if mask is None else mask.to(x.dtype).expand_as(x)
    degree = _neighbour_sum(torch.ones_like(x[:1]))
    diag = mu * m + lam * degree
    h, w = x.shape[-2:]
    ii, jj = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    red = ((ii + jj) % 2 == 0)
    data = mu * m * x
    u = x
    dh = torch.zeros_like(x)
    dv = torch.zeros_like(x)
    bh = torch.zeros_like(x)
    bv = torch.zeros_like(x)
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    iters = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for _ in range(max_iter):
        rhs = data - lam * _div(dh - bh, dv - bv)
        new_u = u
        for _ in range(sweeps):
            for colour in (red, ~red):
                solved = (rhs + lam * _neighbour_sum(new_u)) / diag
                new_u = torch.where(colour, solved, new_u)
        gh, gv = _grad(new_u)
        sh, sv = gh + bh, gv + bv
        s = torch.sqrt(sh ** 2 + sv ** 2)
        shrink = torch.clamp(s - 1.0 / lam, min=0) / torch.where(s > 0, s, torch.ones_like(s))
        new_dh, new_dv = shrink * sh, shrink * sv
        new_bh, new_bv = sh - new_dh, sv - new_dv
        dh, dv = _freeze(active, new_dh, dh), _freeze(active, new_dv, dv)
        bh, bv = _freeze(active, new_bh, bh), _freeze(active, new_bv, bv)
        still = active & _changed(new_u, u, tol)
        u = _freeze(active, new_u, u)
        iters = iters + active.long()
        active = still
        if not bool(active.any()):
            break
    return u, iters.cpu()


@register_defense("tv", weight=0.03, solver="bregman", keep_prob=0.5)
class TotalVariation(nn.Module):
    """TV-minimization defense (Guo et al. 2018), optionally with random pixel dropout.

    Args:
        weight: TV weight of the ROF objective (>= 0; 0 is the identity).
        solver: "chambolle" (Chambolle 2004) or "bregman" (Goldstein & Osher 2009).
        keep_prob: probability that a pixel is kept in the data term (Guo et al.'s pixel
            dropout); 1 = plain TV denoising. Below 1 needs the Bregman solver.
        seed: seeds the per-image dropout mask (from the image's content); None = truly random.
        max_iter, tol: iteration cap and per-image stopping tolerance on max |u_k - u_{k-1}|.

    Shapes: (B, C, H, W) in [0, 1] -> same shape and dtype, in [0, 1].

    Example:
        >>> defense = TotalVariation(weight=0.1, solver="chambolle")
        >>> defended = nn.Sequential(defense, classifier)
    """

    def __init__(self, weight: float = 0.1, solver: str = "chambolle", keep_prob: float = 1.0,
                 seed: int | None = 0, max_iter: int = 200, tol: float = 1e-4) -> None:
        super().__init__()
        self.weight = check_positive(weight, "weight", allow_zero=True)
        if solver not in SOLVERS:
            raise InputError(f"solver must be one of {SOLVERS}, got {solver!r}")
        self.solver = solver
        keep_prob = check_positive(keep_prob, "keep_prob")
        if keep_prob > 1:
            raise InputError(f"keep_prob must be in (0, 1], got {keep_prob}")
        if keep_prob < 1 and solver != "bregman":
            raise InputError("pixel dropout (keep_prob < 1) needs solver='bregman'; Chambolle's "
                             "projection algorithm solves only the unmasked ROF problem")
        self.keep_prob = keep_prob
        self.seed = seed
        self.max_iter = check_int_at_least(max_iter, "max_iter", 1)
        self.tol = check_positive(tol, "tol", allow_zero=True)
        self.last_iterations: torch.Tensor | None = None

    def params(self) -> dict[str, Any]:
        """Name and parameters, as recorded in results.json."""
        p: dict[str, Any] = {"name": "total-variation", "weight": self.weight, "solver": self.solver,
                             "keep_prob": self.keep_prob, "max_iter": self.max_iter, "tol": self.tol}
        if self.keep_prob < 1:
            p["seed"] = self.seed
        return p

    def dropout_mask(self, images: torch.Tensor) -> torch.Tensor:
        """The per-image pixel mask (B, 1, H, W) in {0, 1} for these images."""
        u = per_image_uniform(images, self.seed, tuple(images.shape[2:]), stream="tv-dropout")
        return (u < self.keep_prob).to(images.dtype)[:, None]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        if self.weight == 0:
            return images
        if self.solver == "chambolle":
            u, iters = tv_chambolle(images, self.weight, self.max_iter, self.tol)
        else:
            mask = self.dropout_mask(images) if self.keep_prob < 1 else None
            u, iters = tv_bregman(images, self.weight, mask, self.max_iter, self.tol)
        self.last_iterations = iters
        return u.clamp(0, 1)
