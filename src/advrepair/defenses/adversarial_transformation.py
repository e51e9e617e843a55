"""Defense by adversarial transformation (xiao2020, "One Man's Trash is Another Man's Treasure:
Resisting Adversarial Examples by Adversarial Examples", CVPR 2020).

The defended model is ``f_a(g(x))``: before classification, ``x`` is replaced by an
adversarial example of a fixed, pre-trained external model ``f_b`` (Sec. 3.2):

    g(x) = argmin_{x' in Delta_x} l(f_b(x'), y_L)                       (Eq. 2)
    x'_0 = x + delta,  delta_i ~ U[-Delta, Delta]                       (random start)
    x'_t = Pi_{Delta_x}[ x'_{t-1} - eps * sgn(grad l(f_b(x'_{t-1}), y_L)) ]   (Eq. 3)
    g(x) = x'_N

with ``y_L`` the least-likely class of ``f_b`` at ``x``, ``l`` the cross-entropy, paper
settings Delta = 0.2, N = 13, eps = Delta / 6 (Sec. 4). ``f_a`` is trained on ``g(x)``
(Eq. 1; :func:`advrepair.training.adversarial_transformation.train_on_transformation`).

Also here:
- :func:`selection_statistic`: ``||x - E[g(x)]||_inf`` estimated by sampling the random
  start (Sec. 3.4, Table 1, Fig. 4): the paper's rule for choosing ``f_b`` (larger is better).
- :class:`BPDASurrogate` / :meth:`AdversarialTransformation.bpda_surrogate`: the
  differentiable stand-in of ``g`` the paper attacks through (Sec. 4.1): every ``sgn``
  replaced by soft-sign ``u / (1 + |u|)`` or ``tanh(u)``, and the derivative of the
  projection replaced by Eq. 5::

      d Pi / d u ~= 1                    if |u| < Delta
                    1 / (1 + |u|)^2      otherwise

  where ``u`` is a pixel of the perturbation before projection. Use it with
  ``advrepair.adaptive.BPDA(transform, transform.bpda_surrogate("tanh"))``.

Implementation: ``g`` runs on the shared engine (:func:`advrepair.engine.loop.projected_gradient`,
sign steps, descent on the cross-entropy to ``y_L``), with the per-image seeded random
start of :mod:`advrepair.seeding`, like the reverse attack.

Deviations from the paper, on purpose (the authors' public code differs from the paper
again: untargeted steps of Delta/10, an unused random start and no [0, 1] clipping; we
follow the paper, and the paper's choices are defaults):
- Every iterate is also clipped to [0, 1] (the paper projects onto the Delta ball only),
  so ``g(x)`` is a valid image. In the BPDA surrogate, the [0, 1] clip keeps its exact
  derivative (0 where it clips); Eq. 5 replaces the derivative of the ball clip only.
- The random start is drawn per image from ``(seed, image content, draw)``
  (:func:`advrepair.seeding.per_image_uniform`): the same image with the same seed gets
  the same ``g(x)`` whatever its batch-mates. ``seed=None`` gives a truly random ``g``.
  Training and the selection statistic use other ``draw`` streams, so every epoch and
  every sample draws a fresh start.
- ``target="untargeted"`` (ascend the cross-entropy of f_b's own prediction) is offered
  for comparison with the public code; the paper's LL-PGD is the default.
- ``f_b`` runs in eval mode while transforming (its mode is restored afterwards).
- Sec. 4.1 uses the soft-sign and tanh at unit scale; ``temperature`` rescales the
  argument (``tanh(u / t)``, ``u / (|u| + t)``), t = 1 being the paper's.
- The [0, 1] clip biases E[g(x)] away from x where x is at 0 or 1 (half of the random
  start's mass is clipped there), which inflates the selection statistic on images with
  saturated pixels (Fashion-MNIST backgrounds); the paper's CIFAR images have few.
- Table 1 estimates E[g(x)] with 5000 samples; our default is 64. A finite-sample
  estimate of an L-inf distance is biased upward by the noise of the mean (about
  3 standard errors over a few hundred pixels): compare models at equal ``samples`` and
  read ``return_stderr``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from advrepair.defenses.reverse_attack import weights_fingerprint
from advrepair.engine.loop import LoopTrace, projected_gradient
from advrepair.engine.steps import soft_sign_surrogate, tanh_surrogate
from advrepair.enums import Norm
from advrepair.errors import InputError
from advrepair.validation import check_images, check_int_at_least, check_positive, check_seed
from advrepair.defenses.eval_mode import eval_mode, gradient_loop
from advrepair.engine import project, seeded_random_start

TARGETS = ("least-likely", "untargeted")
SURROGATES = ("tanh", "softsign")
STATISTIC_NORMS = ("linf", "mean-abs")


class AdversarialTransformation(nn.Module):
    """``g``: images -> adversarial examples of ``f_b`` inside the L-inf ball of radius Delta.

    Args:
        f_b: the fixed external classifier (images in [0, 1] -> logits), e.g. a
            :class:`advrepair.models.vgg.SmallVGG`; never trained here.
        delta: Delta, the ball's radius (paper: 0.2 for pixels in [0, 1]); 0 gives the identity.
        steps: N, the LL-PGD iterations (paper: 13).
        step_size: eps of Eq. 3; default ``delta / 6`` (paper).
        target: ``"least-likely"`` (paper: descend the cross-entropy to f_b's least likely
            class at the input) or ``"untargeted"`` (ascend the cross-entropy of f_b's
            prediction at the input).
        random_start: start from ``x + U[-Delta, Delta]`` (paper) or from ``x``.
        seed: seeds the per-image random start; ``None`` makes ``g`` truly random.
        surrogate: differentiate each sign step as this smooth function of the gradient
            when the input carries autograd history (engine ``surrogate=``); ``None`` keeps
            the exact derivative (sign' = 0: the masked identity through start and
            projections). For the paper's full BPDA (Eq. 5 projection derivative too) use
            :meth:`bpda_surrogate`.

    Shapes: (B, C, H, W) in [0, 1] -> (B, C, H, W) in [0, 1], within Delta of the input.

    Example:
        >>> g = AdversarialTransformation(f_b, delta=0.2, steps=13, seed=0)
        >>> defended = nn.Sequential(g, f_a)          # f_a trained on g(x) (Eq. 1)
        >>> attackable = nn.Sequential(BPDA(g, g.bpda_surrogate("tanh")), f_a)
    """

    def __init__(self, f_b: nn.Module, delta: float = 0.2, steps: int = 13, step_size: float | None = None,
                 target: str = "least-likely", random_start: bool = True, seed: int | None = 0,
                 surrogate: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        if not isinstance(f_b, nn.Module):
            raise InputError(f"f_b must be an nn.Module mapping images to logits, got {type(f_b).__name__}")
        self.f_b = f_b
        self.delta = check_positive(delta, "delta", allow_zero=True)
        self.steps = check_int_at_least(steps, "steps", 0)
        self.step_size = (check_positive(step_size, "step_size") if step_size is not None
                          else self.delta / 6.0)
        if target not in TARGETS:
            raise InputError(f"unknown target {target!r}; expected one of {TARGETS}")
        self.target = target
        if not isinstance(random_start, bool):
            raise InputError(f"random_start must be True or False, got {random_start!r}")
        self.random_start = random_start
        check_seed(seed)
        self.seed = seed
        if surrogate is not None and not callable(surrogate):
            raise InputError("surrogate must be a callable (e.g. advrepair.engine.tanh_surrogate(1.0)) or None")
        self.surrogate = surrogate
        self.last_trace: LoopTrace | None = None

    def params(self) -> dict[str, Any]:
        """Name and parameters, as recorded in results.json."""
        return {"name": "adversarial-transformation", "delta": self.delta, "steps": self.steps,
                "step_size": self.step_size, "target": self.target, "random_start": self.random_start,
                "seed": self.seed, "surrogate": None if self.surrogate is None else "custom",
                "f_b": {"arch": getattr(self.f_b, "arch", type(self.f_b).__name__),
                        "weights_sha1": weights_fingerprint(self.f_b)}}

    # -- the pieces of g ---------------------------------------------------------------
    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B,) the class each image is pushed to (least-likely) or away from
        (untargeted), read from ``f_b`` at the input without gradient."""
        with torch.no_grad(), eval_mode(self.f_b):
            logits = self.f_b(images.detach())
        return logits.argmin(1) if self.target == "least-likely" else logits.argmax(1)

    def start(self, images: torch.Tensor, draw: int | str = 0) -> torch.Tensor:
        """x'_0 = Pi(x + delta), delta ~ U[-Delta, Delta] per pixel, seeded by (seed, image, draw).

        Differentiable in ``images`` (derivative 1 where [0, 1] does not clip); the noise
        itself is a constant. Without ``random_start`` returns ``images``.
        """
        if not self.random_start:
            return images
        return seeded_random_start(images, self.delta, Norm.LINF, self.seed, f"xiao-start-{draw}")

    def loss(self, targets: torch.Tensor) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """The engine's per-image loss ``x -> CE(f_b(x), targets)``, shape (B,)."""
        return lambda x, _k: F.cross_entropy(self.f_b(x), targets, reduction="none")

    @property
    def maximize(self) -> bool:
        """LL-PGD descends the loss to y_L (Eq. 3's minus sign); untargeted ascends."""
        return self.target == "untargeted"

    def transform(self, images: torch.Tensor, draw: int | str = 0,
                  trace: LoopTrace | None = None) -> torch.Tensor:
        """g(x) with the random start of stream ``draw`` (``forward`` is draw 0).

        (B, C, H, W) in [0, 1] -> (B, C, H, W) in [0, 1].
        """
        check_images(images)
        if self.delta == 0 or (self.steps == 0 and not self.random_start):
            return images
        with gradient_loop(self.f_b):
            targets = self.targets(images)
            return projected_gradient(
                self.start(images, draw), self.loss(targets), center=images, eps=self.delta,
                step_size=self.step_size, steps=self.steps, norm=Norm.LINF, maximize=self.maximize,
                trace=trace, surrogate=self.surrogate)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        trace = LoopTrace()
        out = self.transform(images, 0, trace)
        self.last_trace = trace
        return out

    def sample(self, images: torch.Tensor, draws: int, first_draw: int = 0, max_batch: int = 256) -> torch.Tensor:
        """``draws`` independent transformations of each image: (B, C, H, W) -> (draws, B, C, H, W).

        Draw k equals ``transform(images, first_draw + k)``; several draws run through the
        engine together (at most ``max_batch`` rows per pass), which changes nothing in
        the result but the speed.
        """
        check_images(images)
        draws = check_int_at_least(draws, "draws", 1)
        max_batch = check_int_at_least(max_batch, "max_batch", 1)
        per_pass = max(1, max_batch // images.shape[0])
        out = []
        with torch.no_grad():
            for lo in range(first_draw, first_draw + draws, per_pass):
                ks = range(lo, min(lo + per_pass, first_draw + draws))
                stacked = torch.cat([images] * len(ks))
                if self.delta == 0 or (self.steps == 0 and not self.random_start):
                    out.append(stacked)
                    continue
                with gradient_loop(self.f_b):
                    targets = self.targets(images).repeat(len(ks))
                    start = torch.cat([self.start(images, k) for k in ks])
                    out.append(projected_gradient(
                        start, self.loss(targets), center=stacked, eps=self.delta, step_size=self.step_size,
                        steps=self.steps, norm=Norm.LINF, maximize=self.maximize))
        return torch.cat(out).view(draws, *images.shape)

    def bpda_surrogate(self, kind: str = "tanh", temperature: float = 1.0) -> "BPDASurrogate":
        """The paper's differentiable stand-in for ``g`` (Sec. 4.1, Eq. 5); see :class:`BPDASurrogate`."""
        return BPDASurrogate(self, kind=kind, temperature=temperature)


# -- Eq. 5: the projection's surrogate derivative ------------------------------------------
def eq5_projection_derivative(u: torch.Tensor, delta: float) -> torch.Tensor:
    """Eq. 5: ``1`` where ``|u| < delta``, else ``1 / (1 + |u|)^2`` (same shape as ``u``).

    ``u`` is the perturbation ``x' - x`` before the ball projection.
    """
    a = u.abs()
    return torch.where(a < delta, torch.ones_like(u), 1.0 / (1.0 + a) ** 2)


class _Eq5Clip(torch.autograd.Function):
    """Forward: ``clamp(u, -delta, delta)``; backward: Eq. 5's derivative."""

    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, delta: float) -> torch.Tensor:
        ctx.save_for_backward(u)
        ctx.delta = delta
        return u.clamp(-delta, delta)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (u,) = ctx.saved_tensors
        return grad * eq5_projection_derivative(u.detach(), ctx.delta), None


def eq5_project(x: torch.Tensor, center: torch.Tensor, delta: float) -> torch.Tensor:
    """``clip(center + clip(x - center, -delta, delta), 0, 1)`` whose ball clip differentiates
    by Eq. 5 (the [0, 1] clip keeps its exact derivative). Shapes: (B, C, H, W) twice -> (B, C, H, W).

    Example:
        >>> eq5_project(torch.full((1, 1, 1, 1), 0.9, requires_grad=True), torch.full((1, 1, 1, 1), 0.5), 0.2)
    """
    return (center + _Eq5Clip.apply(x - center, float(delta))).clamp(0.0, 1.0)


class BPDASurrogate(nn.Module):
    """Differentiable version of ``g`` for BPDA (xiao2020 Sec. 4.1, Eq. 5).

    The forward pass replays ``g``'s iterates (same targets, same seeded random start,
    same sign steps); the backward pass differentiates each ``sgn`` as ``tanh(u / t)`` or
    ``u / (|u| + t)`` (through the gradient of ``f_b``, second order) and each ball
    projection by Eq. 5. The random start is a constant; y_L is a constant.

    Every step is one call of the shared engine with an unbounded ball (which takes the
    gradient, the straight-through surrogate sign step and the [0, 1] clip) followed by
    :func:`eq5_project`; clipping to [0, 1] then to the ball is the exact L-inf projection
    onto their intersection, so the iterates are g's (up to float rounding, since the
    two clips are composed instead of fused).

    Args:
        transform: the :class:`AdversarialTransformation` it stands in for.
        kind: ``"tanh"`` or ``"softsign"`` (paper Fig. 5 uses both).
        temperature: t > 0; 1 is the paper's unscaled function.

    Shapes: (B, C, H, W) in [0, 1] -> (B, C, H, W); only differentiable if the input
    carries autograd history (an attack's input does).

    Example:
        >>> from advrepair.adaptive.bpda import BPDA
        >>> attackable = nn.Sequential(BPDA(g, BPDASurrogate(g, "softsign")), f_a)
    """

    def __init__(self, transform: AdversarialTransformation, kind: str = "tanh", temperature: float = 1.0) -> None:
        super().__init__()
        if not isinstance(transform, AdversarialTransformation):
            raise InputError(f"BPDASurrogate needs an AdversarialTransformation, got {type(transform).__name__}")
        if kind not in SURROGATES:
            raise InputError(f"unknown surrogate kind {kind!r}; expected one of {SURROGATES}")
        self.temperature = check_positive(temperature, "temperature")
        self.kind = kind
        self.transform = transform
        self.sign_surrogate = (tanh_surrogate if kind == "tanh" else soft_sign_surrogate)(self.temperature)

    def params(self) -> dict[str, Any]:
        return {"name": "xiao2020-bpda", "kind": self.kind, "temperature": self.temperature,
                "projection": "eq5", "transform": self.transform.params()}

    def forward(self, images: torch.Tensor, draw: int | str = 0) -> torch.Tensor:
        g = self.transform
        check_images(images)
        if g.delta == 0 or (g.steps == 0 and not g.random_start):
            return images
        with gradient_loop(g.f_b):
            targets = g.targets(images)
            loss = g.loss(targets)
            # the exact [0, 1] projection first (an unbounded ball), then the ball clip with Eq. 5's derivative
            return projected_gradient(g.start(images, draw), loss, center=images, eps=g.delta, step_size=g.step_size,
                                      steps=g.steps, norm=Norm.LINF, maximize=g.maximize,
                                      surrogate=self.sign_surrogate,
                                      projection=lambda z, c: eq5_project(project(z, c, math.inf, Norm.LINF), c,
                                                                          g.delta))


# -- Sec. 3.4, Table 1: the statistic that chooses f_b --------------------------------------
def selection_statistic(f_b: nn.Module | AdversarialTransformation, images: torch.Tensor, samples: int = 64, *,
                        delta: float = 0.2, steps: int = 13, step_size: float | None = None,
                        target: str = "least-likely", seed: int | None = 0, norm: str = "linf",
                        max_batch: int = 256, progress: bool = False,
                        return_stderr: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``||x - E[g(x)]||_inf`` per image, E over the random start, estimated from ``samples`` draws.

    xiao2020 Sec. 3.4 / Table 1 / Fig. 4: the farther the mean transformation lies from
    ``x``, the more robust ``f_a(g(.))`` is to BPDA with the identity (BPDA-I); the
    paper finds it grows with f_b's training (0.005 untrained, 0.13 after 10 epochs,
    0.27 adversarially trained, CIFAR-10, Delta = 0.2, 5000 samples) and averages it
    over images.

    Args:
        f_b: the external model (a transformation is built from the keyword arguments),
            or an :class:`AdversarialTransformation` (its own settings are used and the
            keywords are ignored).
        images: (B, C, H, W) in [0, 1].
        samples: random starts drawn per image (paper: 5000).
        norm: ``"linf"`` (the paper's ``max_i |x_i - E[g(x)]_i|``) or ``"mean-abs"`` (our
            addition: the mean over pixels of ``|x_i - E[g(x)]_i|``). On small networks the
            L-inf version saturates at Delta for every f_b (a single pixel whose gradient
            sign never changes is enough), while the mean still orders them as Table 1.
        return_stderr: also return, per image, the largest (``"linf"``) or mean
            (``"mean-abs"``) standard error of a pixel's mean, ``std_i / sqrt(samples)``,
            to judge the estimate's noise floor.

    Returns:
        (B,) distances (and (B,) standard errors if asked).

    Example:
        >>> d = selection_statistic(f_b, images, samples=64)   # Table 1 reports d.mean()
    """
    check_images(images)
    samples = check_int_at_least(samples, "samples", 1)
    if norm not in STATISTIC_NORMS:
        raise InputError(f"unknown norm {norm!r} for the selection statistic; expected one of {STATISTIC_NORMS}")
    g = f_b if isinstance(f_b, AdversarialTransformation) else AdversarialTransformation(
        f_b, delta=delta, steps=steps, step_size=step_size, target=target, random_start=True, seed=seed)
    total = torch.zeros_like(images, dtype=torch.float64)
    total_sq = torch.zeros_like(images, dtype=torch.float64)
    per_pass = max(1, max_batch // images.shape[0])
    bar = tqdm(total=samples, desc="selection statistic", disable=not progress, leave=False)
    for lo in range(0, samples, per_pass):
        k = min(per_pass, samples - lo)
        draws = g.sample(images, k, first_draw=lo, max_batch=max_batch)
        total += draws.double().sum(0)
        total_sq += (draws.double() ** 2).sum(0)
        bar.update(k)
    bar.close()
    mean = total / samples
    gap = (images.double() - mean).abs().flatten(1)
    distance = (gap.max(1).values if norm == "linf" else gap.mean(1)).to(images.dtype)
    if not return_stderr:
        return distance
    var = (total_sq / samples - mean**2).clamp_min(0.0) * samples / max(samples - 1, 1)
    se = (var / samples).sqrt().flatten(1)
    stderr = (se.max(1).values if norm == "linf" else se.mean(1)).to(images.dtype)
    return distance, stderr
