"""SSP, the Self-Supervised Perturbation of naseer2020 (Algorithm 1, Eq. 1-4).

A label-free attack: maximize the feature distortion ``Delta(x, x') = d(F(x)|_n, F(x')|_n)``
of layer ``n`` of any network ``F`` under an L-inf budget, from a random first step
(the paper's transformation R: "simply adds random noise"), with signed steps of size
``kappa`` and clipping to the ball (Eq. 2-3). The paper leaves ``d`` open (l_p,
Wasserstein, cosine); we default to the mean squared error and offer MAE and cosine.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from advrepair.attacks.base import Attack
from advrepair.engine import seeded_random_start, projected_gradient
from advrepair.errors import InputError
from advrepair.validation import check_int_at_least, check_positive
from advrepair.attacks.registry import register_attack


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).flatten(1).mean(1)


def _mae(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().flatten(1).mean(1)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1 - F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


DISTANCES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": _mse, "mae": _mae, "cosine": _cosine}


class LayerFeatures(nn.Module):
    """The output of one named submodule of ``model`` (``None``: the model's ``features``
    method if it has one, else its output), read with a forward hook.

    Shapes: (B, C, H, W) -> whatever the layer returns, batch first.
    """

    def __init__(self, model: nn.Module, layer: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.layer = layer
        if layer is not None:
            names = dict(model.named_modules())
            if layer not in names:
                sample = [n for n in names if n][:12]
                raise InputError(f"model has no layer {layer!r}; some of its layers: {sample}")
            self._module: nn.Module | None = names[layer]
        else:
            self._module = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._module is None:
            features = getattr(self.model, "features", None)
            return features(x) if callable(features) else self.model(x)
        captured: list[torch.Tensor] = []
        handle = self._module.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            self.model(x)
        finally:
            handle.remove()
        return captured[0]


@register_attack("ssp")
class SSP(Attack):
    """Self-supervised perturbation: maximize feature distortion at a layer, no labels.

    Args:
        model: any network; ``layer`` names one of its submodules (see
            ``dict(model.named_modules())``); ``None`` reads ``model.features`` if present.
        eps: L-inf budget; alpha: step size kappa; steps: iterations T.
        distance: "mse" (default), "mae" or "cosine".

    Shapes: images (B, C, H, W) in [0, 1]; labels are ignored (may be None) -> (B, C, H, W).

    Example:
        >>> adv = SSP(extractor, eps=0.1, alpha=0.01, steps=20, layer="body.3")(images, None)
    """

    name = "ssp"
    uses_labels = False

    def __init__(self, model: nn.Module, eps: float = 16 / 255, alpha: float = 2 / 255, steps: int = 10,
                 layer: str | None = None, distance: str = "mse", seed: int | None = 0) -> None:
        super().__init__(model, eps=eps, norm="Linf", seed=seed)
        self.alpha = check_positive(alpha, "alpha")
        check_int_at_least(steps, "steps", 0)
        if distance not in DISTANCES:
            raise InputError(f"unknown distance {distance!r}; expected one of {sorted(DISTANCES)}")
        self.steps, self.layer, self.distance_name = int(steps), layer, distance
        self.distance = DISTANCES[distance]
        self.extractor = LayerFeatures(model, layer)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.counted(self.extractor(x), x.shape[0])

    def feature_distortion(self, clean: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
        """Delta (Eq. 1) per image, (B,)."""
        with torch.no_grad():
            return self.distance(self.extractor(clean), self.extractor(perturbed))

    def perturb(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            clean_features = self._features(images)
        start = seeded_random_start(images, self.eps, self.norm, self.seed, "ssp-start")

        def loss_fn(x: torch.Tensor, _step: int) -> torch.Tensor:
            return self.distance(self._features(x), clean_features)

        return projected_gradient(start, loss_fn, center=images, eps=self.eps, step_size=self.alpha,
                                  steps=self.steps, norm=self.norm, maximize=True)

    def params(self) -> dict[str, Any]:
        p = super().params()
        p.update(alpha=self.alpha, steps=self.steps, layer=self.layer, distance=self.distance_name)
        return p
