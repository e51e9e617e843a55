"""naseer2020's analyses beyond Tables 1 and 5 (issue 17), on the experiment's models and images.

- Fig. 3: I-FGSM and MI-FGSM crafted on the VGG source with 1..20 iterations: the target's
  accuracy (transfer) and the mean feature distortion d(F(x), F(x_adv)) at the purifier's layer.
- Fig. 4: SSP on the VGG source at each layer of ``fig4_layers``: the target's accuracy.
- Fig. 5: purifiers trained without the feature loss (lambda = 0), without the pixel loss
  (gamma = 0) and without the critic (alpha = 0), in front of the target, clean and under DIM-TI
  from the ensemble (or the VGG source without the ensemble). They are trained with the config's
  ``purifier_recipe``; with the zoo's purifier (trained longer) a full-loss purifier of that recipe
  joins them, so each loss is judged against its own recipe.
- Table 3: an attacker who knows the defense trains its own purifier the same way with another
  seed and crafts DIM-TI through it (its exact gradient: the local purifier is differentiable)
  on each source; scored on the target with and without NRP.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import torch
from torch import nn

from advrepair.attacks.registry import make_attack
from advrepair.attacks.ssp import DISTANCES, LayerFeatures
from advrepair.data import ImageDataset
from advrepair.defenses.purifier import NRPDefense
from advrepair.evaluation.harness import AttackSpec, ModelEntry
from advrepair.evaluation.metrics import accuracy_of
from advrepair.evaluation.store import ResultsStore, record_key
from advrepair.models.checkpoint import ModelCard
from advrepair.models.purifier import Purifier
from advrepair.apps.experiments.nrp.config import (ENSEMBLE, NRPConfig, SOURCE_VGG, _log, _source_name_sha,
                                                   attack_params)

#: Fig. 5's purifiers: (label, the Eq. 8 weight set to zero)
ABLATIONS = (("no-feature-loss", "lam"), ("no-pixel-loss", "gamma"), ("no-critic", "alpha"))
#: Fig. 5's full-loss purifier at the ablations' recipe, when the main one is the zoo's
ALL_LOSSES = "all-losses"
LOCAL_PURIFIER = "local-purifier"


@dataclasses.dataclass
class AblationContext:
    """What the ablations need from the experiment's run."""

    cfg: NRPConfig
    store: ResultsStore
    subset: ImageDataset
    subset_name: str
    device: torch.device
    target: nn.Module
    target_card: ModelCard
    feature_model: nn.Module
    feature_card: ModelCard
    sources: dict[str, Any]
    purifier_card: ModelCard
    defense: nn.Module
    train_purifier: Callable[[NRPConfig, str], tuple[Purifier, ModelCard]]
    evaluate: Callable[[ModelEntry, AttackSpec], dict[str | None, dict[str, Any]]]
    spec: Callable[[Any, str], AttackSpec]


def iteration_sweep(ctx: AblationContext) -> list[str]:
    """Fig. 3: one record per (attack, iterations) with the target's accuracy and the distortion."""
    cfg, vgg = ctx.cfg, ctx.sources[SOURCE_VGG]
    features = LayerFeatures(ctx.feature_model, cfg.feature_layer).eval()
    distance = DISTANCES[cfg.ssp_distance]
    keys = []
    for kind in ("ifgsm", "mifgsm"):
        for steps in cfg.fig3_steps:
            name, params = attack_params(kind, cfg.eps, steps)
            key = record_key(kind="nrp-fig3", attack=name, params=params, source=vgg.name, subset=ctx.subset_name,
                             target=ctx.target_card.weights_sha256, layer=cfg.feature_layer,
                             feature_model=ctx.feature_card.weights_sha256)
            keys.append(key)
            if ctx.store.has(key):
                continue
            _log(f"Fig. 3: {name} with {steps} iterations on {vgg.label}")
            t0 = time.perf_counter()
            attack = make_attack(name, vgg.model, **params)
            correct, distortion = [], []
            for x, y in ctx.subset.batches(cfg.batch_size):
                x, y = x.to(ctx.device), y.to(ctx.device)
                adv = attack(x, y)
                with torch.no_grad():
                    correct.append((ctx.target(adv).argmax(1) == y).cpu())
                    distortion.append(distance(features(adv), features(x)).cpu())
            ok, dist = torch.cat(correct), torch.cat(distortion)
            acc = accuracy_of(ok)
            ctx.store.add({"kind": "nrp-fig3", "key": key, "attack": {"name": name, **params}, "kind_key": kind,
                           "steps": steps, "source": vgg.label, "n_images": acc.n, "accuracy": acc.value,
                           "stderr": acc.stderr, "feature_distortion": float(dist.mean()),
                           "feature_distortion_se": float(dist.std() / max(len(dist), 1) ** 0.5),
                           "layer": cfg.feature_layer, "seconds": time.perf_counter() - t0},
                          {"correct": ok.numpy(), "feature_distortion": dist.numpy()})
    return keys


def layer_sweep(ctx: AblationContext) -> list[str]:
    """Fig. 4: SSP on the VGG source at every layer, scored on the undefended target."""
    cfg, vgg = ctx.cfg, ctx.sources[SOURCE_VGG]
    entry = ModelEntry("fmnist-cnn-standard", ctx.target, card=ctx.target_card.__dict__)
    keys = []
    for layer in cfg.fig4_layers:
        name, params = attack_params("ssp", cfg.eps, cfg.attack_steps, ssp_layer=layer, ssp_distance=cfg.ssp_distance)
        spec = AttackSpec("transfer", {"source": vgg.model, "attack": name, "source_name": vgg.name, **params})
        keys.append(ctx.evaluate(entry, spec)[None]["key"])
    return keys


def loss_ablations(ctx: AblationContext) -> list[dict[str, Any]]:
    """Fig. 5: one purifier per removed loss, with the full NRP, clean and under DIM-TI."""
    cfg = ctx.cfg
    source = ctx.sources[ENSEMBLE] if ENSEMBLE in ctx.sources else ctx.sources[SOURCE_VGG]
    defenses: dict[str, nn.Module] = {"nrp": ctx.defense}
    variants: list[tuple[str, str | None]] = list(ABLATIONS)
    if cfg.zoo:  # the zoo's NRP trained on all the data: the ablations' own recipe needs its full-loss peer
        variants.insert(0, (ALL_LOSSES, None))
    for label, weight in variants:
        recipe = cfg.purifier_recipe
        zeroed = dataclasses.replace(recipe, alpha=0.0 if weight == "alpha" else recipe.alpha,
                                     gamma=0.0 if weight == "gamma" else recipe.gamma,
                                     lam=0.0 if weight == "lam" else recipe.lam)
        purifier, card = ctx.train_purifier(dataclasses.replace(cfg, purifier_recipe=zeroed), f"purifier-{label}")
        defenses[f"nrp-{label}"] = NRPDefense(purifier, seed=cfg.seed, card=card)
    entry = ModelEntry("fmnist-cnn-standard", ctx.target, card=ctx.target_card.__dict__, defenses=defenses)
    out = []
    for attack_label, spec in (("clean", AttackSpec("clean")), ("dim-ti", ctx.spec(source, "dim-ti"))):
        cells = ctx.evaluate(entry, spec)
        out.append({"attack": attack_label, "source": source.label,
                    "cells": {label or "none": r["key"] for label, r in cells.items()}})
    return out


def local_purifier_attack(ctx: AblationContext) -> list[dict[str, Any]]:
    """Table 3: DIM-TI through the attacker's own purifier (another seed), on each source."""
    cfg = ctx.cfg
    # only the purifier's seed changes; source_seed just has to stay unlike seed for the config's check
    attacker = dataclasses.replace(cfg, seed=cfg.seed + 1, source_seed=max(cfg.source_seed, cfg.seed + 1) + 1)
    local, local_card = ctx.train_purifier(attacker, LOCAL_PURIFIER)
    for p in local.parameters():
        p.requires_grad_(False)
    entry = ModelEntry("fmnist-cnn-standard", ctx.target, card=ctx.target_card.__dict__, defenses={"nrp": ctx.defense})
    out = []
    for label, source in ctx.sources.items():
        through = dataclasses.replace(source, label=f"{label}+{LOCAL_PURIFIER}",
                                      model=nn.Sequential(local, source.model).eval(),
                                      sha256=_source_name_sha(source.sha256, local_card.weights_sha256))
        for kind, spec in (("direct", ctx.spec(source, "dim-ti")), ("through-local-purifier",
                                                                      ctx.spec(through, "dim-ti"))):
            cells = ctx.evaluate(entry, spec)
            out.append({"source": label, "kind": kind, "none": cells[None]["key"], "nrp": cells["nrp"]["key"]})
    return out


def run_ablations(ctx: AblationContext) -> dict[str, Any]:
    """Every part above; returns the record keys the report reads."""
    return {"fig3": iteration_sweep(ctx), "fig4": layer_sweep(ctx), "fig5": loss_ablations(ctx),
            "table3": local_purifier_attack(ctx)}
