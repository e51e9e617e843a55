"""The measurements on a zoo card: each accuracy with its attack, budget, image count and
standard error, and the self-supervised loss shift that mao2021's defense rests on."""
from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from advrepair.adaptive.bpda import BPDA
from advrepair.attacks.ssp import DISTANCES, SSP, LayerFeatures
from advrepair.attacks import PGD, AutoAttack
from advrepair.data import ImageDataset, balanced_subset
from advrepair.defenses.reverse_attack import ReverseAttack
from advrepair.evaluation.metrics import accuracy_of
from advrepair.models.base import Classifier
from advrepair.ssl.task import SelfSupervisedTask
from advrepair.models.purifier import Purifier
from advrepair.training.purifier import PurifierRecipe, pixel_loss

#: robust accuracies on this many class-balanced test images (s.e. <= 1.6 points)
ROBUST_IMAGES = 1000


def _correct(model: nn.Module, data: ImageDataset, attack: Callable[..., torch.Tensor] | None,
             device: torch.device, batch_size: int, desc: str, progress: bool) -> torch.Tensor:
    correct = []
    bar = tqdm(data.batches(batch_size), total=-(-len(data) // batch_size), desc=desc, disable=not progress,
               leave=False)
    for x, y in bar:
        x, y = x.to(device), y.to(device)
        if attack is not None:
            x = attack(x, y)
        with torch.no_grad():
            correct.append((model(x).argmax(1) == y).cpu())
    return torch.cat(correct)


def accuracy_metric(model: nn.Module, data: ImageDataset, attack: Any | None, *, metric: str,
                    device: torch.device, batch_size: int = 500, progress: bool = True) -> dict[str, Any]:
    """One card metric: the accuracy of ``model`` on ``data`` (attacked by ``attack`` if given)."""
    start = time.perf_counter()
    acc = accuracy_of(_correct(model, data, attack, device, batch_size, metric, progress))
    return {"metric": metric, "value": acc.value, "stderr": acc.stderr,
            "attack": attack.params() if attack is not None else None, "n_images": acc.n, "split": data.split,
            "seconds": round(time.perf_counter() - start, 1)}


def classifier_metrics(model: nn.Module, test: ImageDataset, eps: float, *, device: torch.device,
                       autoattack: bool = True, progress: bool = True) -> list[dict[str, Any]]:
    """Clean accuracy on the whole test split; PGD-20 and AutoAttack (standard, the published
    budgets) at ``eps`` L-inf on ``ROBUST_IMAGES`` class-balanced test images."""
    robust = balanced_subset(test, min(ROBUST_IMAGES, len(test)), seed=0)
    metrics = [accuracy_metric(model, test, None, metric="clean_accuracy", device=device, progress=progress),
               accuracy_metric(model, robust, PGD(model, eps=eps, alpha=2.5 * eps / 20, steps=20),
                               metric="robust_accuracy", device=device, progress=progress)]
    if autoattack:
        metrics.append(accuracy_metric(model, robust, AutoAttack(model, eps=eps, version="standard"),
                                       metric="robust_accuracy", device=device, progress=progress))
    return metrics


def ssl_loss_metrics(classifier: Classifier, task: SelfSupervisedTask, test: ImageDataset, eps: float, *,
                     device: torch.device, n: int = ROBUST_IMAGES) -> list[dict[str, Any]]:
    """Mean L_s on clean and on PGD-20 images: mao2021's premise is that attacks raise it."""
    data = balanced_subset(test, min(n, len(test)), seed=0)
    probe = ReverseAttack(classifier, task, eps_v=0.0, steps=0, seed=0)
    pgd = PGD(classifier, eps=eps, alpha=2.5 * eps / 20, steps=20)
    clean, attacked = [], []
    for x, y in data.batches(250):
        x, y = x.to(device), y.to(device)
        clean.append(probe.ssl_loss(x).cpu())
        attacked.append(probe.ssl_loss(pgd(x, y)).cpu())
    c, a = torch.cat(clean), torch.cat(attacked)
    return [{"metric": "mean_ssl_loss_clean", "value": float(c.mean()), "stderr": float(c.std() / len(c) ** 0.5),
             "attack": None, "n_images": len(data)},
            {"metric": "mean_ssl_loss_attacked", "value": float(a.mean()), "stderr": float(a.std() / len(a) ** 0.5),
             "attack": pgd.params(), "n_images": len(data)},
            {"metric": "mean_ssl_loss_increase", "value": float((a - c).mean()),
             "stderr": float((a - c).std() / len(c) ** 0.5), "attack": pgd.params(), "n_images": len(data)}]


def defended_metrics(f_a: nn.Module, transform: nn.Module, test: ImageDataset, eps: float, *,
                     device: torch.device, progress: bool = True) -> list[dict[str, Any]]:
    """For f_a trained on ``g(x)``: the defended model ``f_a(g(x))`` clean on the whole test
    split, and under PGD-20 with BPDA-I through ``g`` (the identity on the backward pass; the
    paper's BPDA-I) on ``ROBUST_IMAGES`` class-balanced images. The audit is the strong test."""
    defended = nn.Sequential(transform, f_a).eval()
    attackable = nn.Sequential(BPDA(transform), f_a).eval()
    robust = balanced_subset(test, min(ROBUST_IMAGES, len(test)), seed=0)
    pgd = PGD(attackable, eps=eps, alpha=2.5 * eps / 20, steps=20)
    clean = accuracy_metric(defended, test, None, metric="clean_accuracy_defended", device=device, progress=progress)
    attacked = accuracy_metric(defended, robust, pgd, metric="robust_accuracy_defended", device=device,
                               progress=progress)
    attacked["attack"] = {**pgd.params(), "gradient_of_g": "identity (BPDA-I)"}
    return [clean, attacked]


def purifier_metrics(purifier: Purifier, feature_model: nn.Module, layer: str, data: ImageDataset,
                     recipe: PurifierRecipe, device: torch.device, batch_size: int = 100) -> list[dict[str, Any]]:
    """Held-out Algorithm 2 objectives: with x' = SSP(x) on F at ``layer``, the means of
    d(F(x), F(x')) (no purifier), d(F(x), F(P(x'))), d(F(x), F(P(x))), ||x' - x||_2,
    ||P(x') - x||_2 and ||P(x) - x||_2 over ``data``, each with the standard error of its mean
    (card metrics; labels unused)."""
    features = LayerFeatures(feature_model.eval(), layer)
    distance = DISTANCES[recipe.distance]
    attack = SSP(feature_model, eps=recipe.ssp_eps, alpha=recipe.ssp_alpha, steps=recipe.ssp_steps, layer=layer,
                 distance=recipe.distance, seed=recipe.seed)
    per_image: dict[str, list[torch.Tensor]] = {}
    for x, _ in data.batches(batch_size):
        x = x.to(device)
        adv = attack(x, None)
        with torch.no_grad():
            clean_f = features(x)
            p_adv, p_clean = purifier(adv), purifier(x)
            batch = {"feature_ssp": distance(features(adv), clean_f),
                     "feature_purified_ssp": distance(features(p_adv), clean_f),
                     "feature_purified_clean": distance(features(p_clean), clean_f),
                     "pixel_ssp": pixel_loss(adv, x), "pixel_purified_ssp": pixel_loss(p_adv, x),
                     "pixel_purified_clean": pixel_loss(p_clean, x)}
        for k, v in batch.items():
            per_image.setdefault(k, []).append(v)
    out = []
    for k, parts in per_image.items():
        values = torch.cat(parts).double().cpu()
        stderr = float(values.std() / len(values) ** 0.5) if len(values) > 1 else None
        out.append({"metric": f"mean_{k}", "value": float(values.mean()), "stderr": stderr, "n_images": len(values),
                    "split": data.split, "attack": attack.params()})
    return out
