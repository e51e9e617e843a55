"""The NRP defense (naseer2020, "A Self-supervised Approach for Adversarial Robustness"):
purify an image with a trained purifier P before classifying it.

    plain:    x -> P(x)
    dynamic:  x -> P( Proj_{B(x, eps) ∩ [0,1]}(x + sigma * n) ),  n ~ N(0, I) per image

The paper (Sec. 3, Fig. 2) only describes plain purification. The "dynamic" variant is the
one its public reference implementation offers at inference (small Gaussian noise,
projected back into the L-inf ball of radius eps around the received image and into
[0, 1], then purified); its defaults there are eps = 16/255 and sigma = 0.05, ours too.

Deviations, on purpose:
- The dynamic noise is drawn per image from a generator seeded by ``(seed, image content)``
  (:func:`advrepair.seeding.image_generators`), so a defended image never depends on its
  batch-mates; ``seed=None`` makes the defense truly random.
- The purifier runs in eval mode (it has no batch norm or dropout, so this changes nothing
  today, but it keeps the defense deterministic if someone adds them).
- The autograd graph is kept (noise is a constant, projection is a clamp), so
  ``nn.Sequential(defense, classifier)`` is attackable end to end; BPDA/EOT are the
  adaptive module's job.

Checkpoints: :func:`save_purifier` / :func:`load_purifier` write and read safetensors plus a
JSON card (``kind="purifier"``) whose ``parent`` records the feature extractor's SHA-256
and layer, so a purifier never silently pairs with the wrong extractor.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advrepair.defenses.reverse_attack import weights_fingerprint
from advrepair.engine import project
from advrepair.enums import Norm
from advrepair.errors import CheckpointError, InputError
from advrepair.models.checkpoint import ModelCard, load_checkpoint, save_checkpoint
from advrepair.models.purifier import Purifier
from advrepair.seeding import image_generators
from advrepair.validation import check_images, check_positive, check_seed

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class NRPDefense(nn.Module):
    """A defense ``images -> purified images`` with a trained NRP purifier.

    Args:
        purifier: a trained :class:`advrepair.models.purifier.Purifier`.
        dynamic: add seeded Gaussian noise (projected into the eps ball and [0, 1]) first.
        eps: L-inf radius of the noise projection (dynamic only; reference: 16/255).
        sigma: standard deviation of the noise (dynamic only; reference: 0.05).
        seed: seeds the per-image noise; ``None`` draws it at random each call.
        card: the purifier's checkpoint card, if it came from one (recorded in ``params``).

    Shapes: (B, C, H, W) in [0, 1] -> (B, C, H, W) in [0, 1].

    Example:
        >>> defense = NRPDefense(purifier, dynamic=True, seed=0)
        >>> defended = nn.Sequential(defense, classifier)
    """

    def __init__(self, purifier: Purifier, dynamic: bool = False, eps: float = 16 / 255, sigma: float = 0.05,
                 seed: int | None = 0, card: ModelCard | None = None) -> None:
        super().__init__()
        if not isinstance(purifier, Purifier):
            raise InputError(f"purifier must be a models.purifier.Purifier, got {type(purifier).__name__}")
        if not isinstance(dynamic, bool):
            raise InputError(f"dynamic must be True or False, got {dynamic!r}")
        check_seed(seed)
        self.purifier = purifier
        self.dynamic = dynamic
        self.eps = check_positive(eps, "eps", allow_zero=True)
        self.sigma = check_positive(sigma, "sigma", allow_zero=True)
        self.seed = seed
        self.card = card

    @classmethod
    def from_checkpoint(cls, stem: str | os.PathLike[str], map_location: str | torch.device = "cpu",
                        **kwargs: Any) -> "NRPDefense":
        """Load a saved purifier (see :func:`load_purifier`) and wrap it."""
        purifier, card = load_purifier(stem, map_location=map_location)
        return cls(purifier, card=card, **kwargs)

    def noisy(self, images: torch.Tensor) -> torch.Tensor:
        """The dynamic variant's input: ``Proj(x + sigma * n)``, noise seeded per image. (B,C,H,W) -> same."""
        check_images(images)
        return self._noisy(images)

    def _noisy(self, images: torch.Tensor) -> torch.Tensor:
        gens = image_generators(images, self.seed, "nrp-dynamic")
        shape = tuple(images.shape[1:])
        noise = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(images.device, images.dtype)
        return project(images + self.sigma * noise, images, self.eps, Norm.LINF)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        x = self._noisy(images) if self.dynamic else images
        was_training = self.purifier.training
        self.purifier.eval()
        try:
            return self.purifier(x)
        finally:
            self.purifier.train(was_training)

    def params(self) -> dict[str, Any]:
        """Name and parameters, as recorded in results.json."""
        p: dict[str, Any] = {"name": "nrp", "dynamic": self.dynamic, "seed": self.seed,
                             "arch": self.purifier.arch, "config": dict(self.purifier.config),
                             "weights_sha1": weights_fingerprint(self.purifier)}
        if self.dynamic:
            p.update(eps=self.eps, sigma=self.sigma)
        if self.card is not None:
            p.update(weights_sha256=self.card.weights_sha256,
                     feature_model_sha256=self.card.parent.get("feature_model_sha256"),
                     layer=self.card.parent.get("layer"))
        return p


def state_dict_sha256(module: nn.Module) -> str:
    """SHA-256 over a module's parameter and buffer names, dtypes, shapes and bytes (sorted by name)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def _feature_identity(feature_model: nn.Module | str) -> tuple[str, str]:
    """(sha256, what it hashes): a checkpoint's hex SHA-256 as given, or a module's state dict."""
    if isinstance(feature_model, str):
        sha = feature_model.lower()
        if not _HEX64.match(sha):
            raise InputError("feature_model must be an nn.Module or the 64-hex-digit SHA-256 of its weights file "
                             f"(card.weights_sha256), got {feature_model!r}")
        return sha, "checkpoint"
    if isinstance(feature_model, nn.Module):
        return state_dict_sha256(feature_model), "state_dict"
    raise InputError(f"feature_model must be an nn.Module or a SHA-256 string, got {type(feature_model).__name__}")


def save_purifier(purifier: Purifier, stem: str | os.PathLike[str], *, feature_model: nn.Module | str,
                  layer: str | None, recipe: dict[str, Any] | None = None, dataset: str = "",
                  seed: int | None = None, metrics: list[dict[str, Any]] | None = None,
                  provenance: dict[str, Any] | None = None) -> Path:
    """Write ``stem.safetensors`` and ``stem.json`` (``kind="purifier"``); returns the weights path.

    ``feature_model`` is the extractor P was trained against: the module itself (its state
    dict is hashed) or its checkpoint's ``weights_sha256``. The card's ``parent`` records
    ``feature_model_sha256``, ``feature_model_sha256_of`` (``"state_dict"`` or
    ``"checkpoint"``) and ``layer``, after the items of ``provenance`` (a zoo build's name, training
    history and time); ``recipe`` is e.g. ``PurifierRecipe.to_dict()``.

    Example:
        >>> save_purifier(p, "models/nrp-shapes", feature_model=cnn, layer="body.3",
        ...               recipe=recipe.to_dict(), dataset="shapes", seed=0)
    """
    if not isinstance(purifier, Purifier):
        raise InputError(f"purifier must be a models.purifier.Purifier, got {type(purifier).__name__}")
    if layer is not None and not isinstance(layer, str):
        raise InputError(f"layer must be a layer name or None, got {type(layer).__name__}")
    sha, of = _feature_identity(feature_model)
    card = ModelCard(kind="purifier", arch=purifier.arch, config=dict(purifier.config), dataset=dataset,
                     recipe=dict(recipe or {}), seed=seed, metrics=list(metrics or []),
                     parent={**(provenance or {}), "feature_model_sha256": sha, "feature_model_sha256_of": of,
                             "layer": layer})
    return save_checkpoint(purifier, stem, card)


def load_purifier(stem: str | os.PathLike[str], map_location: str | torch.device = "cpu",
                  feature_model: nn.Module | str | None = None) -> tuple[Purifier, ModelCard]:
    """Rebuild a saved purifier (eval mode) and its card.

    With ``feature_model`` (a module, or a checkpoint SHA-256) the card's recorded extractor
    must match it.

    Raises:
        CheckpointError: missing/mismatched files (see ``load_checkpoint``), a checkpoint of
            another kind, a card without the extractor's identity, or another extractor.

    Example:
        >>> purifier, card = load_purifier("models/nrp-shapes", feature_model=cnn)
    """
    model, card = load_checkpoint(stem, map_location=map_location, expected_kind="purifier")
    if not isinstance(model, Purifier):
        raise CheckpointError(f"{stem}: card architecture {card.arch!r} is not an NRP purifier")
    if "feature_model_sha256" not in card.parent or "layer" not in card.parent:
        raise CheckpointError(f"{stem}: the purifier card does not record its feature extractor "
                              "(parent.feature_model_sha256 and parent.layer)")
    if feature_model is not None:
        sha, of = _feature_identity(feature_model)
        recorded_of = card.parent.get("feature_model_sha256_of", "checkpoint")
        if of != recorded_of:
            raise InputError(f"{stem} records its extractor's {recorded_of} SHA-256; pass "
                             f"{'the module' if recorded_of == 'state_dict' else 'its weights_sha256'} instead")
        if sha != card.parent["feature_model_sha256"]:
            raise CheckpointError(f"{stem} was trained against another feature extractor: SHA-256 "
                                  f"{card.parent['feature_model_sha256'][:12]}... recorded, {sha[:12]}... given")
    return model, card
