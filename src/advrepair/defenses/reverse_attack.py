"""Self-supervised reverse attack (mao2021, "Adversarial Attacks are Reversible with Natural
Supervision", Algorithm 1 and Eq. 3-4).

    x' <- x + n                                  (random start inside the eps_v ball)
    repeat K times:
        x' <- x' - eta * sign(grad_x' L_s(x'))   (descend the self-supervised loss)
        x' <- Proj_{B(x, eps_v) ∩ [0,1]}(x')
    predict F(x')

Paper defaults: eps_v = 2 * eps (the attack's budget), K = 40. The paper's Algorithm 1
writes a plain gradient step; its code, and we, take signed (L-inf) steps. Choices the
paper leaves open: the step size (default ``2.5 * eps_v / K``, Madry et al.'s rule, so
the boundary is reachable from anywhere in the ball), the number of views (4), and the
random start (uniform in the ball).

Deviations, each on purpose:
- Negatives come from a fixed seeded bank of clean training images, not from the other
  test images of the batch (the reference code), so a repair never depends on its batch.
- All randomness (start, augmentations of every step) is drawn per image from a seed and
  the image's content: the same image with the same seed gets the same repair.
- Every network is in eval mode during the repair (BatchNorm statistics are not updated).

``L_s`` may be a weighted sum of several tasks (lawhon: multi-task repair); with one
contrastive task it is exactly mao2021.
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable, Sequence, cast

import torch
from torch import nn

from advrepair.engine import seeded_random_start, LoopTrace, projected_gradient
from advrepair.enums import Norm
from advrepair.models.base import Classifier
from advrepair.seeding import per_image_uniform
from advrepair.ssl.task import SelfSupervisedTask
from advrepair.validation import check_int_at_least, check_images, check_positive
from advrepair.defenses.eval_mode import eval_mode, gradient_loop


#: the most images one pass of an automatically chunked repair takes
MAX_AUTO_CHUNK = 128
#: what the forward activations of one automatically sized chunk may take
AUTO_CHUNK_BYTES = 128 * 2 ** 20


class ReverseAttack(nn.Module):
    """A defense ``images -> repaired images`` that minimizes self-supervised losses.

    Args:
        classifier: the frozen classifier whose features the tasks read.
        tasks: one task, or ``[(task, weight), ...]`` for L = sum_k weight_k * L_k.
        eps_v: reverse-attack budget (paper: 2 * the attack's eps).
        steps: K (paper: 40).
        step_size: eta; default ``2.5 * eps_v / steps``.
        norm: budget norm ("Linf" as in the paper, or "L2").
        random_start: start from a random point of the ball (Algorithm 1, line 4).
        seed: seeds the per-image randomness; ``None`` makes the defense truly random.
        chunk_size: images repaired per pass (their views go through the network
            together); a speed/memory knob only, the repair is the same for any value.
            ``None`` (the default) picks the largest power of two up to
            :data:`MAX_AUTO_CHUNK` whose forward activations stay within
            :data:`AUTO_CHUNK_BYTES`, measured once per image shape (:meth:`chunk_for`):
            128 images on the zoo CNN (1.08x the images per second of 32, 1.2x those of
            256) and 64 on the width-64 one (1.04x 32, 1.13x 128), each the best there.
        surrogate: for attacks that differentiate through the repair: each sign step
            keeps its value but differentiates as this smooth function of the gradient
            (``engine.tanh_surrogate(t)`` or ``soft_sign_surrogate(t)``); ``None`` leaves
            the exact derivative (sign' = 0). Needs memory for K second-order steps,
            or one step with ``checkpoint=True`` (each step recomputed in the backward).

    Shapes: (B, C, H, W) in [0, 1] -> (B, C, H, W) in [0, 1].

    Example:
        >>> defense = ReverseAttack(classifier, task, eps_v=0.2)
        >>> defended = nn.Sequential(defense, classifier)
    """

    #: with ``seed=None`` each image row draws its own start and views (``per_image_uniform``),
    #: so EOT may stack copies of an image in one batch (``adaptive.contract``)
    rowwise_randomness = True

    def __init__(self, classifier: Classifier,
                 tasks: SelfSupervisedTask | Sequence[tuple[SelfSupervisedTask, float]],
                 eps_v: float, steps: int = 40, step_size: float | None = None,
                 norm: str | Norm = Norm.LINF, random_start: bool = True, seed: int | None = 0,
                 chunk_size: int | None = None,
                 surrogate: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 checkpoint: bool = False) -> None:
        super().__init__()
        self.classifier = classifier
        pairs = [(tasks, 1.0)] if isinstance(tasks, SelfSupervisedTask) else list(tasks)
        if not pairs:
            raise ValueError("ReverseAttack needs at least one self-supervised task")
        self.tasks = nn.ModuleList([t for t, _ in pairs])
        self.weights = [float(w) for _, w in pairs]
        self.eps_v = check_positive(eps_v, "eps_v", allow_zero=True)
        self.steps = check_int_at_least(steps, "steps", 0)
        self.step_size = check_positive(step_size, "step_size") if step_size is not None else (
            2.5 * self.eps_v / max(self.steps, 1))
        self.norm = Norm.parse(norm)
        self.random_start = random_start
        self.seed = seed
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None (chosen per image shape), got {chunk_size}")
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self._auto_chunks: dict[tuple[Any, ...], int] = {}
        self.surrogate = surrogate
        self.checkpoint = bool(checkpoint)
        self._keep_iterates = False
        self.last_trace: LoopTrace | None = None

    def params(self) -> dict[str, Any]:
        """Name and parameters, as recorded in results.json."""
        return {"name": "reverse-attack", "eps_v": self.eps_v, "steps": self.steps,
                "step_size": self.step_size, "norm": self.norm.value, "random_start": self.random_start,
                "seed": self.seed,
                "tasks": [{"task": t.name, "weight": w, "weights_sha1": weights_fingerprint(t), **t.config()}
                          for t, w in zip(self.task_list, self.weights)]}

    @property
    def task_list(self) -> list[SelfSupervisedTask]:
        """The tasks, typed (``self.tasks`` is the ModuleList that registers them)."""
        return cast(list[SelfSupervisedTask], list(self.tasks))

    def _draw(self, images: torch.Tensor, steps: int, stream: str) -> list[torch.Tensor]:
        return [per_image_uniform(images, None if self.seed is None else self.seed + 7919 * i,
                                  (steps, *task.numbers_per_image), stream=f"{stream}-{task.name}")
                for i, task in enumerate(self.task_list)]

    def _loss(self, x: torch.Tensor, numbers: list[torch.Tensor], contexts: list[Any]) -> torch.Tensor:
        total = torch.zeros(x.shape[0], device=x.device)
        for task, w, u, ctx in zip(self.task_list, self.weights, numbers, contexts):
            total = total + w * task.per_image_loss(self.classifier, x, u, ctx)
        return total

    def ssl_loss(self, images: torch.Tensor, stream: str = "measure", differentiable: bool = False) -> torch.Tensor:
        """L_s of each image with per-image views: (B, C, H, W) -> (B,).

        ``differentiable=True`` keeps the graph to ``images`` (the defense-aware attack of
        mao2021 Eq. 8 differentiates it); the views are still drawn per image.
        """
        check_images(images)
        with gradient_loop(self), torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            with torch.no_grad():
                contexts = [t.context(self.classifier) for t in self.task_list]
            numbers = [u[:, 0] for u in self._draw(images.detach(), 1, stream)]
            return self._loss(images, numbers, contexts)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        if self.steps == 0 or self.eps_v == 0:
            return images
        # a checkpointed unroll recomputes this forward in a backward pass that may come after the block
        with gradient_loop(self, tap_gradients=not self.checkpoint):
            contexts = [t.context(self.classifier) for t in self.task_list]
            chunk = self.chunk_for(images, contexts)
            traces = [LoopTrace() for _ in range(0, images.shape[0], chunk)]
            repaired = torch.cat([self._repair(part, contexts, trace) for part, trace in
                                  zip(images.split(chunk), traces)])
        self.last_trace = _merge(traces)
        return repaired

    def chunk_for(self, images: torch.Tensor, contexts: list[Any] | None = None) -> int:
        """Images per pass for a batch like ``images``: ``chunk_size`` if set, else chosen
        from the bytes the tasks' forward writes for one image (every submodule's outputs,
        measured once per image shape, dtype and device)."""
        if self.chunk_size is not None:
            return self.chunk_size
        key = (tuple(images.shape[1:]), images.dtype, images.device)
        if key not in self._auto_chunks:
            per_image = self._activation_bytes(images[:1], contexts)
            chunk = 1
            while chunk < MAX_AUTO_CHUNK and 2 * chunk * per_image <= AUTO_CHUNK_BYTES:
                chunk *= 2
            self._auto_chunks[key] = chunk
        return self._auto_chunks[key]

    def _activation_bytes(self, image: torch.Tensor, contexts: list[Any] | None) -> int:
        written = [0]

        def count(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                written[0] += output.numel() * output.element_size()

        with eval_mode(self), torch.no_grad():
            if contexts is None:  # per call, not per image (the contrastive negatives): not counted
                contexts = [t.context(self.classifier) for t in self.task_list]
            numbers = [u[:, 0] for u in self._draw(image, 1, "chunk-probe")]
            hooks = [m.register_forward_hook(count) for m in self.modules() if not list(m.children())]
            try:
                self._loss(image, numbers, contexts)
            finally:
                for hook in hooks:
                    hook.remove()
        return max(written[0], 1)

    def _repair(self, x: torch.Tensor, contexts: list[Any], trace: LoopTrace) -> torch.Tensor:
        numbers = self._draw(x, self.steps, "reverse-views")
        if self.random_start:
            start = seeded_random_start(x, self.eps_v, self.norm, self.seed, "reverse-start")
        else:
            start = x
        return projected_gradient(
            start, lambda z, k: self._loss(z, [u[:, k] for u in numbers], contexts),
            center=x, eps=self.eps_v, step_size=self.step_size, steps=self.steps,
            norm=self.norm, maximize=False, trace=trace, surrogate=self.surrogate,
            checkpoint=self.checkpoint, keep_iterates=self._keep_iterates)

    def variant(self, **overrides: Any) -> "ReverseAttack":
        """The same repair (same classifier, tasks and weights) with some options changed,
        e.g. ``variant(seed=None)`` for EOT or ``variant(steps=5, surrogate=..., checkpoint=True)``
        for a shortened, differentiable unroll. The step size follows ``steps`` unless given."""
        options: dict[str, Any] = dict(eps_v=self.eps_v, steps=self.steps, norm=self.norm,
                                       random_start=self.random_start, seed=self.seed, chunk_size=self.chunk_size,
                                       surrogate=self.surrogate, checkpoint=self.checkpoint)
        if "steps" not in overrides:
            options["step_size"] = self.step_size
        options.update(overrides)
        return ReverseAttack(self.classifier, list(zip(self.task_list, self.weights)), **options)

    def trajectory(self, images: torch.Tensor) -> torch.Tensor:
        """Every iterate of the repair: (B, C, H, W) -> (K + 1, B, C, H, W); the first is the
        (random) start, the last the repaired image ``forward`` returns."""
        self._keep_iterates = True
        try:
            with torch.no_grad():
                final = self(images)
            assert self.last_trace is not None
            return torch.stack([*self.last_trace.iterates, final]) if self.steps and self.eps_v else final[None]
        finally:
            self._keep_iterates = False


def _merge(traces: list[LoopTrace]) -> LoopTrace:
    merged = LoopTrace(gradient_evaluations=sum(t.gradient_evaluations for t in traces))
    merged.iterates = [torch.cat([t.iterates[k] for t in traces]) for k in range(len(traces[0].iterates))]
    for k in range(len(traces[0].per_image_loss)):
        losses = torch.cat([t.per_image_loss[k] for t in traces])
        merged.per_image_loss.append(losses)
        merged.mean_loss.append(float(losses.mean()))
    return merged


def weights_fingerprint(module: nn.Module) -> str:
    """SHA-1 of a module's parameters and buffers, so results name the exact weights they used."""
    h = hashlib.sha1()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
