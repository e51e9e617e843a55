"""The NRP experiment's models, trained once and reused from their cards: transfer sources, the purifier."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from advrepair.data import ImageDataset, balanced_subset
from advrepair.defenses.bit_depth import BitDepthReduction
from advrepair.defenses.jpeg import JPEGCompression
from advrepair.defenses.median import MedianFilter
from advrepair.defenses.purifier import NRPDefense, load_purifier, save_purifier
from advrepair.defenses.resize_pad import RandomResizePad
from advrepair.defenses.total_variation import TotalVariation
from advrepair.errors import InputError
from advrepair.models.checkpoint import ModelCard, checkpoint_paths, read_card
from advrepair.models.purifier import Critic, Purifier
from advrepair.apps.pipeline import ensure_classifier
from advrepair.training import ClassifierRecipe
from advrepair.training.purifier import train_purifier
from advrepair.zoo.metrics import purifier_metrics

import matplotlib

matplotlib.use("Agg")
from advrepair.apps.experiments.nrp.config import NRPConfig, PURIFIER_DIR, PURIFIER_STEM, _log

#: model folders under ``models_dir``



class LogitEnsemble(nn.Module):
    """Mean of the members' logits: the "Ensemble" transfer source of naseer2020 Table 1.

    Shapes: (B, C, H, W) in [0, 1] -> (B, num_classes).

    Example:
        >>> ens = LogitEnsemble([vgg, cnn])
        >>> ens(torch.rand(4, 1, 28, 28)).shape
        torch.Size([4, 10])
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 1:
            raise InputError("LogitEnsemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


@dataclass
class _Source:
    label: str
    model: nn.Module
    sha256: str

    @property
    def name(self) -> str:
        """How transfer records name this source: label and weights' SHA-256 prefix."""
        return f"{self.label}@{self.sha256[:12]}"


def build_defenses(cfg: NRPConfig, purifier: Purifier | None, purifier_card: ModelCard | None) -> dict[str, nn.Module]:
    """The defenses of ``cfg.defenses`` (without "none"), by label, in table order."""
    def make(label: str) -> nn.Module:
        if label == "jpeg":
            return JPEGCompression(cfg.jpeg_quality)
        if label == "tv":
            return TotalVariation(weight=cfg.tv_weight)
        if label == "median":
            return MedianFilter(cfg.median_size)
        if label == "bit-depth":
            return BitDepthReduction(cfg.bits)
        if label == "resize-pad":
            return RandomResizePad(seed=cfg.seed)
        if purifier is None:
            raise InputError(f"defense {label!r} needs the trained purifier")
        return NRPDefense(purifier, dynamic=label == "nrp-dynamic", seed=cfg.seed, card=purifier_card)
    return {label: make(label) for label in cfg.defenses if label != "none"}


# ----------------------------------------------------------------------------- models

def _ensure_source(cfg: NRPConfig, folder: str, arch: str, arch_config: dict[str, Any], recipe: ClassifierRecipe,
                   seed: int, train: ImageDataset, test: ImageDataset, device: torch.device) -> tuple[nn.Module, ModelCard]:
    model, card = ensure_classifier(cfg.models_dir / folder, train, test, arch=arch, recipe=recipe, seed=seed,
                                    arch_config=arch_config, eval_eps=cfg.eps, device=device, progress=cfg.progress)
    differs = {k: (card.config.get(k), v) for k, v in arch_config.items() if card.config.get(k) != v}
    if differs:
        raise InputError(f"{cfg.models_dir / folder} holds a {arch} with other options {differs} (card vs wanted); "
                         "delete the folder or choose another models_dir")
    return model.eval(), card


def _purifier_wanted(cfg: NRPConfig, feature_card: ModelCard, in_channels: int, size: int) -> dict[str, Any]:
    purifier_config = Purifier(in_channels=in_channels, **cfg.purifier_config).config
    recipe = cfg.purifier_recipe.card_dict(cfg.purifier_recipe.critic(in_channels, size, **cfg.critic_config))
    return json.loads(json.dumps({"config": purifier_config, "recipe": recipe, "seed": cfg.seed,
                                  "feature_model_sha256": feature_card.weights_sha256,
                                  "layer": cfg.feature_layer}))


def ensure_purifier(cfg: NRPConfig, feature_model: nn.Module, feature_card: ModelCard, train: ImageDataset,
                    test: ImageDataset, device: torch.device, stem_name: str = PURIFIER_STEM
                    ) -> tuple[Purifier, ModelCard]:
    """Load ``models_dir/nrp-purifier/purifier`` if its card records the same P and C
    configs, recipe, seed, extractor SHA-256 and layer; else train it by Algorithm 2
    (``training.purifier.train_purifier``), measure it on 200 balanced test images and save it."""
    stem = cfg.models_dir / PURIFIER_DIR / stem_name
    c, h, w = train.image_shape
    wanted = _purifier_wanted(cfg, feature_card, c, min(h, w))
    if checkpoint_paths(stem)[0].exists():
        card = read_card(stem)
        have = {"config": card.config, "recipe": card.recipe, "seed": card.seed,
                "feature_model_sha256": card.parent.get("feature_model_sha256"), "layer": card.parent.get("layer")}
        if have == wanted:
            purifier, card = load_purifier(stem, map_location=device, feature_model=feature_card.weights_sha256)
            _log(f"reusing {stem}.safetensors ({_purifier_summary(card)})")
            return purifier.eval(), card
        _log(f"{stem}.json records another purifier, recipe or extractor; retraining")
    torch.manual_seed(cfg.seed)
    purifier = Purifier(**wanted["config"])
    critic = Critic(**wanted["recipe"]["critic"])
    recipe = cfg.purifier_recipe
    _log(f"training the NRP purifier (Algorithm 2) against SSP on {cfg.feature_source} layer {cfg.feature_layer}: "
         f"{recipe.epochs} epoch(s) on {min(recipe.train_subset or len(train), len(train))} training images, "
         f"batch {recipe.batch_size}, lr {recipe.lr:g}")
    t0 = time.perf_counter()
    history = train_purifier(purifier, critic, feature_model, None, train, recipe, device=device,
                             progress=cfg.progress)
    seconds = time.perf_counter() - t0
    probe = balanced_subset(test, min(200, len(test)), seed=cfg.seed)
    metrics = purifier_metrics(purifier, feature_model, cfg.feature_layer, probe, recipe, device)
    metrics.append({"metric": "training_history", "value": history, "seconds": seconds})
    save_purifier(purifier, stem, feature_model=feature_card.weights_sha256, layer=cfg.feature_layer,
                  recipe=wanted["recipe"], dataset=train.name, seed=cfg.seed, metrics=metrics)
    purifier, card = load_purifier(stem, map_location=device, feature_model=feature_card.weights_sha256)
    _log(f"saved {stem}.safetensors ({_purifier_summary(card)})")
    return purifier.eval(), card


def _purifier_summary(card: ModelCard) -> str:
    m = {d["metric"]: d.get("value") for d in card.metrics}
    if "mean_feature_ssp" not in m:
        return "no metrics"
    return (f"held-out feature distortion SSP {m['mean_feature_ssp']:.4f} -> purified "
            f"{m['mean_feature_purified_ssp']:.4f}; ||P(x)-x||_2 {m['mean_pixel_purified_clean']:.3f}")
