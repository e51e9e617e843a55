"""SPSA (Uesato et al. 2018): Adam on a finite-difference gradient estimate from the scores only."""
from __future__ import annotations

from typing import Any, Callable

import torch

from advrepair.attacks.base import Attack
from advrepair.attacks.losses import margin as margin_loss
from advrepair.attacks.registry import register_attack
from advrepair.engine import project
from advrepair.enums import Norm
from advrepair.errors import InputError
from advrepair.seeding import image_generators
from advrepair.validation import check_images, check_int_at_least, check_labels, check_positive

# Adam's constants (torch.optim.Adam's defaults, which the paper's reference code uses)
_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8


@register_attack("spsa")
class SPSA(Attack):
    """SPSA: ascend the margin loss with Adam, on gradients estimated from logits alone.

    Uesato, O'Donoghue, van den Oord, Kohli, "Adversarial Risk and the Dangers of Evaluating
    Against Weak Attacks", ICML 2018 (Algorithm 1). The attacker's loss is the margin
    ``max_{j != y} z_j - z_y`` (positive exactly when the image is misclassified; in a
    targeted call ``z_t - max_{j != t} z_j``). Each step estimates its gradient at the current
    iterate ``x`` from ``samples`` Rademacher directions ``v`` (every pixel +-1 with equal
    odds), each queried as an antithetic pair::

        g = mean_v  (L(x + delta v) - L(x - delta v)) / (2 delta) * v

    then takes one Adam step of size ``lr`` on the perturbation (torch.optim.Adam's update,
    betas (0.9, 0.999)) and clips it to the eps box and the image to [0, 1]. The queries
    ``x +- delta v`` are clamped to [0, 1] too, since models and defenses may refuse images
    outside it; at a pixel on the box's edge the difference is then one-sided.

    Queries: every step costs ``2 * samples`` forward passes per image for the estimate plus
    one to check the new iterate, so at most ``steps * (2 * samples + 1)`` per image. An image
    stops at its first misclassified iterate, which is what it returns; an image never fooled
    returns its last iterate. Gradients are never used. The directions come from a generator
    seeded by the image's content and ``seed`` (``seed=None``: torch's global generator), so
    an image's result does not depend on its batch-mates. Deviations from torchattacks /
    advertorch: they share each direction across the batch and return the last iterate; here
    each image has its own directions and stops once fooled.

    Args:
        model: maps (B, C, H, W) images in [0, 1] to logits (B, K).
        eps: L-inf budget (``norm`` must be ``"Linf"``; L2 is refused).
        delta: finite-difference step of the estimate, > 0.
        lr: Adam's step size on the perturbation, > 0.
        steps: Adam steps, >= 1.
        samples: Rademacher directions per estimate, >= 1 (each costs two queries).
        max_batch: at most this many images per forward pass, >= 2 (queries of all images
            are batched together up to it).
        seed: seeds the directions per image; ``None`` draws from torch's global generator.

    Shapes: images (B, C, H, W) in [0, 1], labels (B,) -> (B, C, H, W).

    Example:
        >>> adv = SPSA(model, eps=0.1, delta=0.01, lr=0.01, steps=10, samples=128)(images, labels)
    """

    name = "spsa"
    supports_targets = True

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor], eps: float = 8 / 255,
                 norm: str | Norm = Norm.LINF, delta: float = 0.01, lr: float = 0.01, steps: int = 10,
                 samples: int = 128, max_batch: int = 512, seed: int | None = 0) -> None:
        super().__init__(model, eps=eps, norm=norm, seed=seed)
        if self.norm is not Norm.LINF:
            raise InputError(f"SPSA is an L-inf attack (its Adam steps are clipped to the eps box); "
                             f"got norm {self.norm.value!r}")
        self.delta = check_positive(delta, "delta")
        self.lr = check_positive(lr, "lr")
        self.steps = check_int_at_least(steps, "steps", 1)
        self.samples = check_int_at_least(samples, "samples", 1)
        self.max_batch = check_int_at_least(max_batch, "max_batch", 2)

    def params(self) -> dict[str, Any]:
        p = super().params()
        p.update(delta=self.delta, lr=self.lr, steps=self.steps, samples=self.samples, max_batch=self.max_batch)
        return p

    def queries_per_image(self) -> int:
        """Forward passes spent on an image that is never fooled: ``steps * (2 * samples + 1)``."""
        return self.steps * (2 * self.samples + 1)

    # -- objective ---------------------------------------------------------------------
    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        saved, self.targets = self.targets, targets
        try:
            return self.objective(logits.float(), labels, loss=margin_loss)
        finally:
            self.targets = saved

    def _fooled(self, logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        saved, self.targets = self.targets, targets
        try:
            return self.succeeded(logits, labels)
        finally:
            self.targets = saved

    # -- the estimate ------------------------------------------------------------------
    def estimate_gradient(self, images: torch.Tensor, labels: torch.Tensor,
                          targets: torch.Tensor | None = None) -> torch.Tensor:
        """The SPSA estimate of the gradient of the attacker's loss (the margin, or the
        targeted margin toward ``targets``) at ``images``; ``2 * samples`` counted passes per
        image. Directions are seeded by each image and ``seed``, as in an attack's first step.
        The model is used as it is (put it in eval mode first; a call does that itself).

        Shapes: images (B, C, H, W) in [0, 1], labels (B,), targets (B,) or None -> (B, C, H, W).
        """
        check_images(images)
        check_labels(labels, images.shape[0])
        if targets is not None:
            check_labels(targets, images.shape[0])
        with torch.no_grad():
            gens = image_generators(images, self.seed, "spsa")
            return self._estimate(images.detach(), labels, targets, gens)

    def _estimate(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None,
                  gens: list[torch.Generator]) -> torch.Tensor:
        a, shape = x.shape[0], x.shape[1:]
        # each image's directions from its own generator, in a fixed per-image order
        signs = torch.stack([torch.rand(self.samples, *shape, generator=g) < 0.5 for g in gens]).to(x.device)
        signs = signs.flatten(0, 1)  # (a * samples, C, H, W), image-major
        owner = torch.arange(a, device=x.device).repeat_interleave(self.samples)
        grad = torch.zeros_like(x)
        pairs = max(self.max_batch // 2, 1)
        for start in range(0, a * self.samples, pairs):
            img = owner[start:start + pairs]
            v = signs[start:start + pairs].to(x.dtype) * 2 - 1
            base = x[img]
            queries = torch.cat([(base + self.delta * v).clamp(0, 1), (base - self.delta * v).clamp(0, 1)])
            logits = self.logits(queries)
            y2 = y[img].repeat(2)
            t2 = None if t is None else t[img].repeat(2)
            loss = self._loss(logits, y2, t2)
            n = img.numel()
            slope = ((loss[:n] - loss[n:]) / (2 * self.delta)).to(x.dtype)
            grad.index_add_(0, img, slope.view(-1, *([1] * len(shape))) * v)
        return grad / self.samples

    # -- attack ------------------------------------------------------------------------
    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._run(images, labels)

    def _run(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gens = image_generators(x, self.seed, "spsa")
        adv = x.clone()
        act = torch.arange(x.shape[0], device=x.device)
        x_a, y_a, t_a = x, y, self.targets
        dx = torch.zeros_like(x)
        m, v = torch.zeros_like(x), torch.zeros_like(x)
        current = x
        for step in range(1, self.steps + 1):
            grad = self._estimate(current, y_a, t_a, gens)
            m = _BETA1 * m + (1 - _BETA1) * grad
            v = _BETA2 * v + (1 - _BETA2) * grad * grad
            m_hat, v_hat = m / (1 - _BETA1 ** step), v / (1 - _BETA2 ** step)
            dx = dx + self.lr * m_hat / (v_hat.sqrt() + _ADAM_EPS)  # ascend: the loss is the attacker's
            current = project(x_a + dx, x_a, self.eps, Norm.LINF)
            dx = current - x_a
            fooled = self._fooled(self.logits(current), y_a, t_a)
            if bool(fooled.any()):
                adv[act[fooled]] = current[fooled]
                keep = ~fooled
                act, x_a, y_a, dx, m, v, current = (z[keep] for z in (act, x_a, y_a, dx, m, v, current))
                t_a = None if t_a is None else t_a[keep]
                gens = [g for g, k in zip(gens, keep.tolist()) if k]
                if act.numel() == 0:
                    break
        adv[act] = current
        return adv


__all__ = ["SPSA"]
