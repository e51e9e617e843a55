"""Checks that warn when a robustness number is likely too good (in the spirit of
AutoAttack's flags and Croce et al. 2022), and scoring of randomized defenses.

Each flag is a dict ``{"flag", "fired", "detail"}`` so it can go into results.json as is.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from advrepair.errors import InputError
from advrepair.validation import check_images, check_int_at_least, check_labels, check_positive

Model = Callable[[torch.Tensor], torch.Tensor]


def _flag(name: str, fired: bool, detail: str) -> dict[str, Any]:
    return {"flag": name, "fired": bool(fired), "detail": detail}


def _check_accuracy(value: Any, what: str) -> float:
    """``value`` as a float if it is a number in [0, 1], else a clear InputError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise InputError(f"{what} must be an accuracy in [0, 1], got {value!r}")
    return float(value)


def _check_model(model: Any) -> None:
    if not callable(model):
        raise InputError(f"model must be callable (images -> logits), got {type(model).__name__}")


def randomness_flag(model: Model, images: torch.Tensor, passes: int = 2) -> dict[str, Any]:
    """Fires when repeated forward passes on the same images give different outputs."""
    _check_model(model)
    check_images(images)
    passes = check_int_at_least(passes, "passes", 2)
    with torch.no_grad():
        outs = [model(images) for _ in range(passes)]
    diff = max(float((o - outs[0]).abs().max()) for o in outs[1:])
    return _flag("randomness", diff > 1e-6,
                 f"max output difference over {passes} passes: {diff:.3g}; score with randomized_accuracy "
                 "and attack with EOT" if diff > 1e-6 else "outputs are deterministic")


def gradient_flag(model: Model, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Fires when the input gradient of the cross-entropy is zero or NaN for some images
    (a shattered or obfuscated gradient: gradient attacks cannot work there)."""
    _check_model(model)
    check_images(images)
    check_labels(labels, images.shape[0])
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
    for what, results in (("white_box", white_box), ("black_box", black_box)):
        if not isinstance(results, dict):
            raise InputError(f"{what} must be a dict {{attack name: accuracy}}, got {type(results).__name__}")
        for name, acc in results.items():
            _check_accuracy(acc, f"{what}[{name!r}]")
    check_positive(margin, "margin", allow_zero=True)
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
    check_positive(tolerance, "tolerance", allow_zero=True)
    pairs = []
    for item in accuracy_by_strength:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise InputError(f"accuracy_by_strength must hold (strength, accuracy) pairs, got {item!r}")
        strength, acc = item
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or math.isnan(strength):
            raise InputError(f"attack strength must be a number, got {strength!r}")
        pairs.append((strength, _check_accuracy(acc, f"accuracy at strength {strength:g}")))
    accuracy_by_strength = pairs
    ordered = sorted(accuracy_by_strength)
    rises = [(a, b) for (a, acc_a), (b, acc_b) in zip(ordered, ordered[1:]) if acc_b > acc_a + tolerance]
    detail = (", ".join(f"accuracy rises from strength {a:g} to {b:g}" for a, b in rises)
              if rises else "accuracy never rises with attack strength")
    return _flag("accuracy-rises-with-strength", bool(rises), detail)


def randomized_accuracy(model: Model, images: torch.Tensor, labels: torch.Tensor, draws: int = 10) -> dict[str, float]:
    """Accuracy of a randomized model over ``draws`` forward passes: the mean over draws,
    and the stricter "correct on every draw" (an image wrong on any draw counts as wrong)."""
    _check_model(model)
    check_images(images)
    check_labels(labels, images.shape[0])
    draws = check_int_at_least(draws, "draws", 1)
    with torch.no_grad():
        correct = torch.stack([model(images).argmax(1) == labels for _ in range(draws)])
    return {"mean_accuracy": correct.float().mean().item(),
            "all_draws_accuracy": correct.all(0).float().mean().item(), "draws": draws,
            "n_images": images.shape[0]}
