"""APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks"): projected gradient ascent with momentum whose step size
halves at checkpoints when progress stalls, restarting from the best point found so far.

The core loop (``APGD._run``) is shared by the untargeted attack here and by APGD-T
(``advrepair.attacks.apgd_t``), which only changes the loss and the list of runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from advrepair.attacks.base import Attack
from advrepair.attacks.losses import cross_entropy, dlr_loss
from advrepair.engine import random_direction, default_step_rule, project
from advrepair.enums import Norm
from advrepair.errors import InputError
from advrepair.validation import check_positive
from advrepair.attacks.registry import register_attack

#: ``loss(logits) -> (B,)``, with the labels (and targets) of the images already bound.
LogitLoss = Callable[[torch.Tensor], torch.Tensor]

# The denominators of the DLR losses are differences of logits that can vanish for a
# collapsed model; the paper adds this constant to keep the ratio finite.
APGD_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ce": cross_entropy, "dlr": dlr_loss,
}


def checkpoints(steps: int) -> list[int]:
    """The iterations after which APGD may halve its step size.

    The paper's schedule ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03,
    0.06)``, ``w_j = ceil(p_j * steps)``, computed on integer segment lengths (first
    ``0.22 N``, each next one ``0.03 N`` shorter, never below ``0.06 N``) because
    ``ceil(0.22 * 100)`` is 23 in floating point. For ``steps=100``:
    ``[22, 41, 57, 70, 80, 87, 93, 99]``.
    """
    first = max(int(0.22 * steps), 1)
    shrink = max(int(0.03 * steps), 1)
    shortest = max(int(0.06 * steps), 1)
    out: list[int] = []
    w, length = 0, first
    while w + length <= steps:
        w += length
        out.append(w)
        length = max(length - shrink, shortest)
    return out


def check_count(value: Any, name: str, minimum: int = 1) -> int:
    """An integer ``>= minimum`` (bools and non-integral floats rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _on_subset(loss_for: Callable[[torch.Tensor], LogitLoss], idx: torch.Tensor) -> Callable[[torch.Tensor], LogitLoss]:
    """``loss_for`` of a run over the images ``idx``, indexed within that run."""
    return lambda sub: loss_for(idx[sub])


@dataclass
class _Run:
    """One APGD run on a batch: the best-loss point and the first misclassified point."""

    best: torch.Tensor       # (B, C, H, W) highest-loss iterate
    best_loss: torch.Tensor  # (B,)
    adv: torch.Tensor        # (B, C, H, W) first misclassified iterate (meaningful where fooled)
    fooled: torch.Tensor     # (B,) bool


@register_attack("apgd")
class APGD(Attack):
    """Auto-PGD, untargeted, with the cross-entropy (``"ce"``) or DLR (``"dlr"``) loss.

    Each run starts from a random point on the budget's boundary (per-image seeded), takes
    ``steps`` momentum steps (``alpha = 0.75``) of initial size ``2 eps``, and at each
    checkpoint halves the step of an image, moving it back to its best point, when fewer
    than ``rho`` of the steps since the last checkpoint increased the loss, or when its
    step was not halved at the last checkpoint and its best loss has not improved since.
    Images misclassified clean are not attacked; each restart attacks only the images no
    earlier run has fooled. Per image the result is the first misclassified iterate found,
    else the highest-loss one.

    Shapes: images (B, C, H, W) in [0, 1], labels (B,) -> (B, C, H, W).

    Args:
        steps: iterations per run (the paper's ``N_iter``).
        n_restarts: runs from fresh random starts.
        loss: ``"ce"`` or ``"dlr"`` (DLR needs at least 3 classes).
        rho: fraction of loss-increasing steps below which the step halves.
        eot_iter: gradients averaged over this many forward/backward passes per step
            (expectation over transformation, for randomized models).
        eot_batched: run the ``eot_iter`` passes as one batch of stacked copies. Only for a
            model that draws its randomness independently per batch row (a defense that
            declares ``rowwise_randomness``); one draw shared by the batch would make every
            copy the same draw.

    Example:
        >>> adv = APGD(model, eps=8/255, steps=100, loss="dlr")(images, labels)
    """

    name = "apgd-ce"
    #: weight of the new step against the previous displacement (the paper's alpha).
    momentum = 0.75
    #: drop an image from the batch at its first success (the same results, fewer model
    #: passes); ``False`` steps every image to the end, the reference the tests compare with
    drop_fooled = True

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], eps: float = 8 / 255,
                 norm: str | Norm = Norm.LINF, steps: int = 100, n_restarts: int = 1,
                 loss: str = "ce", rho: float = 0.75, eot_iter: int = 1,
                 seed: int | None = 0, eot_batched: bool = False) -> None:
        super().__init__(model, eps=eps, norm=norm, seed=seed)
        self.steps = check_count(steps, "steps")
        self.n_restarts = check_count(n_restarts, "n_restarts")
        self.eot_iter = check_count(eot_iter, "eot_iter")
        self.eot_batched = bool(eot_batched)
        self.rho = check_positive(rho, "rho")
        if self.rho > 1:
            raise InputError(f"rho is a fraction of steps and must be in (0, 1], got {rho}")
        if loss not in APGD_LOSSES:
            raise InputError(f"unknown APGD loss {loss!r}; expected one of {sorted(APGD_LOSSES)}")
        self.loss_name = loss
        self.name = f"apgd-{loss}"

    # -- the shared loop ---------------------------------------------------------------
    def _start(self, images: torch.Tensor, stream: str) -> torch.Tensor:
        """A random point at distance ``eps`` (the paper starts on the boundary, not inside)."""
        return project(images + self.eps * random_direction(images, self.norm, self.seed, stream), images, self.eps,
                       self.norm)

    def _one_pass(self, x: torch.Tensor, loss_fn: LogitLoss) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_req = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.logits(x_req)
            loss = loss_fn(logits)
            (grad,) = torch.autograd.grad(loss.sum(), x_req)
        return loss.detach(), grad, logits.detach()

    def _loss_grad(self, x: torch.Tensor, loss_fn: LogitLoss) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-image loss, its gradient and the logits, each averaged over ``eot_iter`` passes."""
        if self.eot_iter == 1:  # nothing to average: no sums, no passes over x
            return self._one_pass(x, loss_fn)
        if self.eot_batched:
            return self._loss_grad_stacked(x, loss_fn)
        loss, grad, logits = self._one_pass(x, loss_fn)
        for _ in range(self.eot_iter - 1):
            more = self._one_pass(x, loss_fn)
            loss, grad, logits = loss + more[0], grad + more[1], logits + more[2]
        n = float(self.eot_iter)
        return loss / n, grad / n, logits / n

    def _loss_grad_stacked(self, x: torch.Tensor, loss_fn: LogitLoss
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``_loss_grad`` with the ``eot_iter`` copies of each image in one batch: the same
        estimator when the model draws its randomness per row (``eot_batched``), in one call."""
        n, b = self.eot_iter, x.shape[0]
        x_req = x.detach().repeat(n, *([1] * (x.dim() - 1))).requires_grad_(True)
        with torch.enable_grad():
            logits = self.logits(x_req).view(n, b, -1)
            loss = torch.stack([loss_fn(copy) for copy in logits])  # (n, b)
            (grad,) = torch.autograd.grad(loss.sum(), x_req)
        return (loss.detach().sum(0) / n, grad.reshape(n, *x.shape).sum(0) / n,
                logits.detach().sum(0) / n)

    def _run(self, images: torch.Tensor, labels: torch.Tensor, loss_for: Callable[[torch.Tensor], LogitLoss],
             stream: str) -> _Run:
        """One APGD run from a random start; success means misclassified (not the target hit).

        ``loss_for(indices)`` is the loss of those images of this run. An image leaves the
        batch at its first success: its result (that iterate) is final, and every image's
        steps depend on its own values only, so the others' iterates are those of the full
        batch (tests/test_fast_paths.py) while the model, often a whole defense, runs only
        on images still standing.
        """
        rule = default_step_rule(self.norm)
        b = images.shape[0]
        ones = (1,) * (images.dim() - 1)
        alive = torch.arange(b, device=images.device)  # this run's images still not fooled

        x = self._start(images, stream)
        loss, grad, logits = self._loss_grad(x, loss_for(alive))
        fooled = logits.argmax(1) != labels
        adv = x.clone()
        best, best_loss = x.clone(), loss.clone()  # full size; rows of fooled images are never read
        center, y = images, labels
        best_w, best_loss_w, best_grad = x.clone(), loss.clone(), grad.clone()

        step = torch.full((b, *ones), 2 * self.eps, device=images.device)
        x_prev = x
        loss_here = loss  # loss at the current iterate, for counting successful steps
        increases = torch.zeros(b, device=images.device)
        best_at_check = best_loss.clone()
        # The reference treats the start as a halving so condition 2 cannot fire at w_1.
        halved_at_check = torch.ones(b, dtype=torch.bool, device=images.device)
        marks, last_mark = set(checkpoints(self.steps)), 0
        newly = fooled

        for i in range(self.steps):
            if self.drop_fooled and bool(newly.any()):  # newly: fooled by the last step
                keep = ~newly
                best[alive[~keep]] = best_w[~keep]
                best_loss[alive[~keep]] = best_loss_w[~keep]
                alive = alive[keep]
                center, y, x, x_prev, grad, step = (t[keep] for t in (center, y, x, x_prev, grad, step))
                best_w, best_loss_w, best_grad, loss_here, increases, best_at_check, halved_at_check = (
                    t[keep] for t in (best_w, best_loss_w, best_grad, loss_here, increases, best_at_check,
                                      halved_at_check))
                if alive.numel() == 0:
                    break
            a = 1.0 if i == 0 else self.momentum
            z = project(x + step * rule.direction(grad), center, self.eps, self.norm)
            x_new = project(x + a * (z - x) + (1 - a) * (x - x_prev), center, self.eps, self.norm)
            x_prev, x = x, x_new

            loss, grad, logits = self._loss_grad(x, loss_for(alive))
            newly = (logits.argmax(1) != y) & ~fooled[alive]
            adv[alive[newly]] = x[newly]
            fooled[alive[newly]] = True
            if bool(fooled.all()):
                break
            increases += (loss > loss_here).float()
            loss_here = loss
            improved = loss > best_loss_w
            best_w[improved] = x[improved]
            best_grad[improved] = grad[improved]
            best_loss_w = torch.where(improved, loss, best_loss_w)

            if i + 1 in marks:
                length, last_mark = i + 1 - last_mark, i + 1
                stalled = (~halved_at_check) & (best_loss_w <= best_at_check)
                halve = (increases < self.rho * length) | stalled
                halved_at_check, best_at_check = halve, best_loss_w.clone()
                increases.zero_()
                step = torch.where(halve.view(-1, *ones), step / 2, step)
                x = torch.where(halve.view(-1, *ones), best_w, x)
                grad = torch.where(halve.view(-1, *ones), best_grad, grad)
                loss_here = torch.where(halve, best_loss_w, loss_here)
        best[alive] = best_w
        best_loss[alive] = best_loss_w
        return _Run(best=best, best_loss=best_loss, adv=adv, fooled=fooled)

    def _attack(self, images: torch.Tensor, labels: torch.Tensor, clean_logits: torch.Tensor,
                runs: Iterable[tuple[str, Callable[[torch.Tensor], LogitLoss]]]) -> torch.Tensor:
        """Run ``(stream, loss_for(indices))`` in order, each on the images not yet fooled."""
        fooled = clean_logits.argmax(1) != labels
        out = images.clone()
        out_loss = torch.full((images.shape[0],), float("-inf"), device=images.device)
        for stream, loss_for in runs:
            idx = (~fooled).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            run = self._run(images[idx], labels[idx], _on_subset(loss_for, idx), stream)
            better = (~run.fooled) & (run.best_loss > out_loss[idx])
            out[idx[better]] = run.best[better]
            out_loss[idx[better]] = run.best_loss[better]
            out[idx[run.fooled]] = run.adv[run.fooled]
            fooled[idx[run.fooled]] = True
        return out

    # -- the contract ------------------------------------------------------------------
    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            clean = self.logits(images)
        if self.loss_name == "dlr" and clean.shape[1] < 3:
            # checked here too: with every image misclassified clean the loss never runs
            raise InputError(f"the DLR loss needs at least 3 classes, the model has {clean.shape[1]}")
        loss = APGD_LOSSES[self.loss_name]

        def loss_for(idx: torch.Tensor) -> LogitLoss:
            sub = labels[idx]
            return lambda logits: loss(logits, sub)

        runs = ((f"apgd-start-{r}", loss_for) for r in range(self.n_restarts))
        return self._attack(images, labels, clean, runs)

    def params(self) -> dict[str, Any]:
        p = super().params()
        p.update(steps=self.steps, n_restarts=self.n_restarts, loss=self.loss_name, rho=self.rho,
                 eot_iter=self.eot_iter)
        return p


@register_attack("apgd-ce")
class APGDCE(APGD):
    """APGD with cross-entropy, the registry's ``apgd-ce`` (see ``APGD``).

    Example:
        >>> adv = APGDCE(model, eps=8/255)(images, labels)
    """

    name = "apgd-ce"

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], eps: float = 8 / 255,
                 norm: str | Norm = Norm.LINF, steps: int = 100, n_restarts: int = 1,
                 rho: float = 0.75, eot_iter: int = 1, seed: int | None = 0, eot_batched: bool = False) -> None:
        super().__init__(model, eps=eps, norm=norm, steps=steps, n_restarts=n_restarts, loss="ce",
                         rho=rho, eot_iter=eot_iter, seed=seed, eot_batched=eot_batched)


@register_attack("apgd-dlr")
class APGDDLR(APGD):
    """APGD with the DLR loss, the registry's ``apgd-dlr`` (see ``APGD``).

    Example:
        >>> adv = APGDDLR(model, eps=8/255)(images, labels)
    """

    name = "apgd-dlr"

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], eps: float = 8 / 255,
                 norm: str | Norm = Norm.LINF, steps: int = 100, n_restarts: int = 1,
                 rho: float = 0.75, eot_iter: int = 1, seed: int | None = 0, eot_batched: bool = False) -> None:
        super().__init__(model, eps=eps, norm=norm, steps=steps, n_restarts=n_restarts, loss="dlr",
                         rho=rho, eot_iter=eot_iter, seed=seed, eot_batched=eot_batched)
