"""The experiment's models, trained once and reused from their cards: f_b, f_a, the imitator, the independent model."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402
from torch import nn  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from advrepair.apps.experiments.setup import frozen_zoo_model  # noqa: E402
from advrepair.data import ImageDataset  # noqa: E402
from advrepair.defenses.adversarial_transformation import AdversarialTransformation  # noqa: E402
from advrepair.errors import InputError  # noqa: E402
from advrepair.evaluation.metrics import Accuracy  # noqa: E402
from advrepair.evaluation.store import ResultsStore, jsonable  # noqa: E402
from advrepair.models.checkpoint import (ModelCard, checkpoint_paths, load_checkpoint, read_card,  # noqa: E402
                                         save_checkpoint)
from advrepair.models.base import Classifier  # noqa: E402
from advrepair.models.small_cnn import SmallCNN  # noqa: E402
from advrepair.models.vgg import SmallVGG  # noqa: E402
from advrepair.training.adversarial_transformation import (Reparameterization, TrainingCost,  # noqa: E402
                                                           compare_training_cost, fit_imitator, imitation_error,
                                                           measure_training_cost, train_on_transformation)
from advrepair.training.loops import train_classifier  # noqa: E402
from advrepair.validation import check_images, check_int_at_least  # noqa: E402
from advrepair.apps.experiments.adversarial_transformation.config import FbVariant, IMITATOR_ARCH, XiaoConfig



def transformation_statistics(g: AdversarialTransformation, images: torch.Tensor, samples: int,
                              max_batch: int = 256) -> dict[str, torch.Tensor]:
    """Both selection statistics of xiao2020 Sec. 3.4 from one set of ``samples`` draws of ``g``.

    Returns ``mean`` (B, C, H, W), the estimate of E[g(x)], and per image (B,) tensors
    ``linf`` (``max_i |x_i - E[g(x)]_i|``, Table 1's row 3),
    ``mean_abs`` (the mean over pixels), and their standard errors ``linf_se`` (largest
    per-pixel standard error of the mean) and ``mean_abs_se`` (mean one), exactly as
    :func:`advrepair.defenses.adversarial_transformation.selection_statistic` computes each
    (same draws), at half the cost of calling it once per norm.

    Shapes: images (B, C, H, W) in [0, 1].

    Example:
        >>> stats = transformation_statistics(AdversarialTransformation(f_b, delta=0.2), x, samples=64)
        >>> float(stats["linf"].mean()), float(stats["mean_abs"].mean())
    """
    check_images(images)
    if not isinstance(g, AdversarialTransformation):
        raise InputError(f"g must be an AdversarialTransformation, got {type(g).__name__}")
    samples = check_int_at_least(samples, "samples", 1)
    max_batch = check_int_at_least(max_batch, "max_batch", 1)
    total = torch.zeros_like(images, dtype=torch.float64)
    total_sq = torch.zeros_like(images, dtype=torch.float64)
    per_pass = max(1, max_batch // images.shape[0])
    for lo in range(0, samples, per_pass):
        k = min(per_pass, samples - lo)
        draws = g.sample(images, k, first_draw=lo, max_batch=max_batch).double()
        total += draws.sum(0)
        total_sq += (draws ** 2).sum(0)
    mean = total / samples
    gap = (images.double() - mean).abs().flatten(1)
    var = (total_sq / samples - mean ** 2).clamp_min(0.0) * samples / max(samples - 1, 1)
    se = (var / samples).sqrt().flatten(1)
    dtype = images.dtype
    return {"linf": gap.max(1).values.to(dtype), "mean_abs": gap.mean(1).to(dtype),
            "linf_se": se.max(1).values.to(dtype), "mean_abs_se": se.mean(1).to(dtype), "mean": mean.to(dtype)}


# -- cached models ----------------------------------------------------------------------------
def _norm(value: Any) -> Any:
    """JSON round trip (tuples -> lists, inf -> "inf") so cards compare with live configs."""
    return json.loads(json.dumps(jsonable(value), sort_keys=True, default=str))


def _log(msg: str) -> None:
    tqdm.write(msg)


def card_matches(stem: str | os.PathLike[str], *, kind: str, arch: str, config: dict[str, Any], dataset: str,
                 recipe: dict[str, Any], seed: int | None, parent: dict[str, Any] | None = None) -> bool:
    """Whether ``stem``'s checkpoint exists and its card records exactly this model and training.

    ``parent`` entries must equal the card's ``parent`` entries of the same names (e.g. the
    SHA-256 of the f_b a model was trained through). A card that cannot be read counts as a
    mismatch (the model is retrained and the card rewritten).
    """
    weights, card_path = checkpoint_paths(stem)
    if not (weights.exists() and card_path.exists()):
        return False
    try:
        card = read_card(stem)
    except Exception:  # noqa: BLE001 - any unreadable card means "train again"
        return False
    return (card.kind == kind and card.arch == arch and _norm(card.config) == _norm(config)
            and card.dataset == dataset and _norm(card.recipe) == _norm(recipe) and card.seed == seed
            and all(_norm(card.parent.get(k)) == _norm(v) for k, v in (parent or {}).items()))


def _build(cls: type[Classifier], seed: int, data: ImageDataset, config: dict[str, Any]) -> Classifier:
    torch.manual_seed(seed)
    c, h, _w = data.image_shape
    return cls(in_channels=c, num_classes=data.num_classes, input_size=h, **config)


def _clean_accuracy(model: nn.Module, data: ImageDataset, batch_size: int, device: torch.device,
                    transform: nn.Module | None = None) -> Accuracy:
    correct = 0
    for x, y in data.batches(batch_size):
        x, y = x.to(device), y.to(device)
        if transform is not None:
            x = transform(x)
        with torch.no_grad():
            correct += int((model(x).argmax(1) == y).sum())
    return Accuracy(correct, len(data))


def _metric(name: str, acc: Accuracy, data: ImageDataset, what: str) -> dict[str, Any]:
    return {"metric": name, "value": acc.value, "stderr": acc.stderr, "attack": None, "n_images": acc.n,
            "split": data.split, "scored": what}


@dataclass
class _Run:
    cfg: XiaoConfig
    store: ResultsStore
    train: ImageDataset
    data: ImageDataset  # the class-balanced evaluation images
    subset: str
    device: torch.device

    def save(self, model: nn.Module, stem: Path, card: ModelCard) -> ModelCard:
        save_checkpoint(model, stem, card)
        _log(f"saved {stem}.safetensors")
        return card


def _ensure_f_b(run: _Run, variant: FbVariant) -> tuple[nn.Module, ModelCard]:
    cfg = run.cfg
    if cfg.zoo and variant.zoo_name is not None:
        return zoo_classifier(run, variant.zoo_name)
    stem = cfg.models_dir / f"fb-{variant.name}"
    model = _build(SmallVGG, cfg.seed, run.train, cfg.fb_config)
    recipe = variant.recipe.to_dict() if variant.recipe is not None else {"untrained": True}
    wanted: dict[str, Any] = dict(kind="classifier", arch=SmallVGG.arch, config=model.config,
                                  dataset=run.train.name, recipe=recipe, seed=cfg.seed)
    if card_matches(stem, **wanted, parent={"role": "f_b"}):
        loaded, card = load_checkpoint(stem, map_location=run.device, expected_kind="classifier")
        _log(f"reusing {stem}.safetensors (f_b {variant.name})")
        return loaded, card
    cost: TrainingCost | None = None
    if variant.recipe is not None:
        _log(f"training f_b {variant.name} ({variant.description}) -> {stem}.safetensors")
        recipe_ = variant.recipe
        cost = measure_training_cost(lambda: train_classifier(model, run.train, recipe_, seed=cfg.seed,
                                                              device=run.device, progress=cfg.progress),
                                     {"f_b": model})
    model.to(run.device).eval()
    acc = _clean_accuracy(model, run.data, cfg.batch_size, run.device)
    card = ModelCard(kind="classifier", arch=SmallVGG.arch, config=model.config, dataset=run.train.name,
                     recipe=recipe, seed=cfg.seed, metrics=[_metric("clean_accuracy", acc, run.data, "f_b")],
                     parent={"role": "f_b", "variant": variant.name, "description": variant.description,
                             "training_cost": None if cost is None else cost.to_dict(),
                             "history": None if cost is None else cost.result})
    return model, run.save(model, stem, card)


def _tag(delta: float) -> str:
    """A file-name-safe Delta (``0.2`` -> ``0p2``): checkpoint stems must not contain dots."""
    return f"{delta:g}".replace(".", "p")


def _transform(f_b: nn.Module, delta: float, steps: int, seed: int | None, random_start: bool = True
               ) -> AdversarialTransformation:
    return AdversarialTransformation(f_b, delta=delta, steps=steps, seed=seed, random_start=random_start)


def _fa_parent(g: AdversarialTransformation, fb_card: ModelCard) -> dict[str, Any]:
    return {"role": "f_a on g", "f_b_sha256": fb_card.weights_sha256, "transform": g.params()}


def _defended_metrics(run: _Run, f_a: nn.Module, g: nn.Module | None) -> list[dict[str, Any]]:
    out = [_metric("clean_accuracy", _clean_accuracy(f_a, run.data, run.cfg.batch_size, run.device), run.data,
                   "classifier alone")]
    if g is not None:
        out.append(_metric("clean_accuracy_defended", _clean_accuracy(f_a, run.data, run.cfg.batch_size,
                                                                      run.device, g), run.data, "f_a(g(x))"))
    return out


def _ensure_defended_pair(run: _Run, g: AdversarialTransformation, fb_card: ModelCard
                          ) -> tuple[tuple[nn.Module, ModelCard], tuple[nn.Module, ModelCard]]:
    """f_a trained on g and its PGD-AT twin, trained together so their costs share one run."""
    cfg = run.cfg
    stem_g = cfg.models_dir / f"fa-xiao-delta{_tag(g.delta)}"
    stem_at = cfg.models_dir / "fa-pgd-at"
    config = _build(SmallCNN, cfg.seed, run.train, cfg.fa_config).config
    common: dict[str, Any] = dict(kind="classifier", arch=SmallCNN.arch, config=config, dataset=run.train.name,
                                  seed=cfg.seed)
    parent_g = _fa_parent(g, fb_card)
    parent_at = {"role": "pgd-at baseline", "partner_transform": g.params()}
    if (card_matches(stem_g, **common, recipe=cfg.fa_recipe.to_dict(), parent=parent_g)
            and card_matches(stem_at, **common, recipe=cfg.fa_adversarial_recipe.to_dict(), parent=parent_at)):
        _log(f"reusing {stem_g}.safetensors and {stem_at}.safetensors (trained and timed together)")
        return (load_checkpoint(stem_g, map_location=run.device, expected_kind="classifier"),
                load_checkpoint(stem_at, map_location=run.device, expected_kind="classifier"))
    _log(f"training f_a on g(x) (Delta {g.delta:g}, N {g.steps}) and, for the cost comparison, the same f_a by "
         f"PGD-{cfg.fa_adversarial_recipe.steps} adversarial training")
    costs = compare_training_cost(lambda: _build(SmallCNN, cfg.seed, run.train, cfg.fa_config), g, run.train,
                                  cfg.fa_recipe, cfg.fa_adversarial_recipe, seed=cfg.seed, device=run.device,
                                  progress=cfg.progress)
    out = []
    for method, stem, recipe, parent, defense in (
            ("transformation", stem_g, cfg.fa_recipe, parent_g, g),
            ("pgd-at", stem_at, cfg.fa_adversarial_recipe, parent_at, None)):
        model, history = costs[method].result
        model.eval()
        card = ModelCard(kind="classifier", arch=SmallCNN.arch, config=model.config, dataset=run.train.name,
                         recipe=recipe.to_dict(), seed=cfg.seed, metrics=_defended_metrics(run, model, defense),
                         parent={**parent, "training_cost": costs[method].to_dict(), "history": history,
                                 "timed_with": "pgd-at" if method == "transformation" else "transformation"})
        out.append((model, run.save(model, stem, card)))
    return out[0], out[1]


def zoo_classifier(run: _Run, name: str) -> tuple[nn.Module, ModelCard]:
    """A shipped zoo classifier, frozen (f_b and the baselines are never trained here)."""
    return frozen_zoo_model(name, run.device)


def _ensure_ablation_fa(run: _Run, g: AdversarialTransformation, fb_card: ModelCard, stem_name: str | None = None,
                         why: str = "Fig. 6") -> tuple[nn.Module, ModelCard]:
    """An ablation f_a trained on ``g`` (another Delta for Fig. 6, another f_b for Table 1,
    a small N for App. A.3) with ``fa_recipe`` and the run's seed."""
    cfg = run.cfg
    stem = cfg.models_dir / (stem_name or f"fa-xiao-delta{_tag(g.delta)}")
    model = _build(SmallCNN, cfg.seed, run.train, cfg.fa_config)
    parent = _fa_parent(g, fb_card)
    wanted: dict[str, Any] = dict(kind="classifier", arch=SmallCNN.arch, config=model.config, dataset=run.train.name,
                  recipe=cfg.fa_recipe.to_dict(), seed=cfg.seed)
    if card_matches(stem, **wanted, parent=parent):
        _log(f"reusing {stem}.safetensors")
        return load_checkpoint(stem, map_location=run.device, expected_kind="classifier")
    _log(f"training f_a on g(x) with Delta {g.delta:g}, N {g.steps} ({why}) -> {stem}.safetensors")
    cost = measure_training_cost(lambda: train_on_transformation(model, g, run.train, cfg.fa_recipe, seed=cfg.seed,
                                                                 device=run.device, progress=cfg.progress),
                                 {"f_a": model, "f_b": g.f_b})
    model.eval()
    card = ModelCard(kind="classifier", arch=SmallCNN.arch, config=model.config, dataset=run.train.name,
                     recipe=cfg.fa_recipe.to_dict(), seed=cfg.seed, metrics=_defended_metrics(run, model, g),
                     parent={**parent, "training_cost": cost.to_dict(), "history": cost.result})
    return model, run.save(model, stem, card)


def _ensure_independent(run: _Run) -> tuple[nn.Module, ModelCard]:
    """A standard SmallCNN with another seed: the transfer source and the no-defense baseline."""
    cfg = run.cfg
    seed = cfg.seed + 1
    stem = cfg.models_dir / f"fa-standard-seed{seed}"
    model = _build(SmallCNN, seed, run.train, cfg.fa_config)
    wanted: dict[str, Any] = dict(kind="classifier", arch=SmallCNN.arch, config=model.config, dataset=run.train.name,
                  recipe=cfg.fa_recipe.to_dict(), seed=seed)
    if card_matches(stem, **wanted, parent={"role": "independent"}):
        _log(f"reusing {stem}.safetensors")
        return load_checkpoint(stem, map_location=run.device, expected_kind="classifier")
    _log(f"training an independent standard SmallCNN (seed {seed}) -> {stem}.safetensors")
    cost = measure_training_cost(lambda: train_classifier(model, run.train, cfg.fa_recipe, seed=seed,
                                                          device=run.device, progress=cfg.progress), {"f": model})
    model.eval()
    card = ModelCard(kind="classifier", arch=SmallCNN.arch, config=model.config, dataset=run.train.name,
                     recipe=cfg.fa_recipe.to_dict(), seed=seed, metrics=_defended_metrics(run, model, None),
                     parent={"role": "independent", "training_cost": cost.to_dict(), "history": cost.result})
    return model, run.save(model, stem, card)


def _ensure_imitator(run: _Run, g: AdversarialTransformation, fb_card: ModelCard) -> tuple[nn.Module, ModelCard]:
    """h imitating g by MSE (Sec. 4.1 reparameterization), with its train and held-out errors."""
    cfg = run.cfg
    stem = cfg.models_dir / f"imitator-delta{_tag(g.delta)}"
    c = run.train.image_shape[0]
    config: dict[str, Any] = dict(channels=c, delta=g.delta, width=cfg.imitator_width, depth=cfg.imitator_depth)
    fit = dict(epochs=cfg.imitator_epochs, batch_size=64, lr=cfg.imitator_lr, train_subset=cfg.imitator_subset,
               loss="mse to one draw of g per epoch")
    parent = {"f_b_sha256": fb_card.weights_sha256, "transform": g.params()}
    if card_matches(stem, kind="xiao-imitator", arch=IMITATOR_ARCH, config=config, dataset=run.train.name,
                    recipe=fit, seed=cfg.seed, parent=parent):
        _log(f"reusing {stem}.safetensors")
        return load_checkpoint(stem, map_location=run.device, expected_kind="xiao-imitator")
    _log(f"fitting the imitator h of g (reparameterization attack) -> {stem}.safetensors")
    torch.manual_seed(cfg.seed)
    untrained = Reparameterization(**config)
    t0 = time.perf_counter()
    net = fit_imitator(g, run.train, net=untrained, epochs=cfg.imitator_epochs, batch_size=64, lr=cfg.imitator_lr,
                       train_subset=cfg.imitator_subset, seed=cfg.seed, device=run.device, progress=cfg.progress)
    seconds = time.perf_counter() - t0
    n_probe = min(len(run.data), 200)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_idx = torch.randperm(len(run.train), generator=gen)[:n_probe]
    train_x = run.train.tensors(train_idx)[0].to(run.device)
    test_x = run.data.tensors(range(n_probe))[0].to(run.device)
    metrics = [{"metric": "imitation_mse_train_images", "value": imitation_error(net, g, train_x, draw="probe"),
                "n_images": n_probe, "split": run.train.split, "attack": None},
               {"metric": "imitation_mse_heldout_images", "value": imitation_error(net, g, test_x, draw="probe"),
                "n_images": n_probe, "split": run.data.split, "attack": None},
               {"metric": "g_draw_to_draw_mse", "value": float(((g.transform(test_x, "probe") -
                                                                g.transform(test_x, "probe-2")) ** 2).mean()),
                "n_images": n_probe, "split": run.data.split, "attack": None}]
    card = ModelCard(kind="xiao-imitator", arch=IMITATOR_ARCH, config=config, dataset=run.train.name, recipe=fit,
                     seed=cfg.seed, metrics=metrics,
                     parent={**parent, "history": getattr(net, "history", None), "seconds": seconds})
    return net, run.save(net, stem, card)


# -- evaluation rows --------------------------------------------------------------------------
