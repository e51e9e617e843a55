"""Checks that warn when a robustness number is likely too good (in the spirit of
AutoAttack's flags and Croce et al. 2022), and scoring of randomized defenses.

Each flag is a dict ``{"flag", "fired", "detail"}`` so it can go into results.json as is.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

Model = Callable[[torch.Tensor], torch.Tensor]


def _flag(name: str, fired: bool, detail: str) -> dict[str, Any]:
    return {"flag": name, "fired": bool(fired), "detail": detail}


def randomness_flag(model: Model, images: torch.Tensor, passes: int = 2) -> dict[str, Any]:
    """Fires when repeated forward passes on the same images give different outputs."""
    with torch.no_grad():
        outs = [model(images) for _ in range(passes)]
    diff = max(float((o - outs[0]).abs().max()) for o in outs[1:])
    return _flag("randomness", diff > 1e-6,
                 f"max output difference over {passes} passes: {diff:.3g}; score with randomized_accuracy "
                 "and attack with EOT" if diff > 1e-6 else "outputs are deterministic")


def gradient_flag(model: Model, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Fires when the input gradient of the cross-entropy is zero or NaN for some images
    (a shattered or obfuscated gradient: gradient attacks cannot work there)."""
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), labels, reduction="sum")
        grads = torch.autograd.grad(loss, x, allow_unused=True)[0]
    if grads is None:
        return _flag("zero-or-nan-gradient", True, "the output does not depend on the input in the graph")
    per_image = grads.flatten(1)
    nan = int(torch.isnan(per_image).any(1).sum())
    zero = int((per_image.abs().sum(1) == 0).sum())
    n = images.shape[0]
    return _flag("zero-or-nan-gradient", nan + zero > 0,
                 f"{zero} of {n} images have a zero gradient, {nan} a NaN gradient")


def black_box_flag(white_box: dict[str, float], black_box: dict[str, float], margin: float = 0.0) -> dict[str, Any]:
    """Fires when a black-box attack reaches lower accuracy than every white-box one
    (``{attack name: accuracy}``): the gradients are likely misleading."""
    if not white_box or not black_box:
        return _flag("black-box-beats-white-box", False, "needs both white-box and black-box results")
    best_white = min(white_box, key=white_box.__getitem__)
    best_black = min(black_box, key=black_box.__getitem__)
    fired = black_box[best_black] < white_box[best_white] - margin
    return _flag("black-box-beats-white-box", fired,
                 f"best black-box {best_black} {black_box[best_black]:.3f} vs best white-box "
                 f"{best_white} {white_box[best_white]:.3f}")


def monotonicity_flag(accuracy_by_strength: Sequence[tuple[float, float]], tolerance: float = 0.0) -> dict[str, Any]:
    """Fires when accuracy rises as the attack gets stronger (more steps or a larger budget):
    ``[(strength, accuracy), ...]``."""
    ordered = sorted(accuracy_by_strength)
    rises = [(a, b) for (a, acc_a), (b, acc_b) in zip(ordered, ordered[1:]) if acc_b > acc_a + tolerance]
    detail = (", ".join(f"accuracy rises from strength {a:g} to {b:g}" for a, b in rises)
              if rises else "accuracy never rises with attack strength")
    return _flag("accuracy-rises-with-strength", bool(rises), detail)


def randomized_accuracy(model: Model, images: torch.Tensor, labels: torch.Tensor, draws: int = 10) -> dict[str, float]:
    """Accuracy of a randomized model over ``draws`` forward passes: the mean over draws,
    and the stricter "correct on every draw" (an image wrong on any draw counts as wrong)."""
    with torch.no_grad():
        correct = torch.stack([model(images).argmax(1) == labels for _ in range(draws)])
    return {"mean_accuracy": correct.float().mean().item(),
            "all_draws_accuracy": correct.all(0).float().mean().item(), "draws": draws,
            "n_images": images.shape[0]}
