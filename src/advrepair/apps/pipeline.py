"""Train-or-reuse steps shared by the CLI and the demo.

A model directory holds one classifier and the self-supervised heads trained on it:

    <dir>/classifier.safetensors + classifier.json
    <dir>/ssl-<task>.safetensors + ssl-<task>.json      (contrastive, rotation, inpainting)

``ensure_*`` reuse a checkpoint whose card records the same recipe, seed and parent, and
train (then measure and save) otherwise.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from advrepair.attacks import PGD
from advrepair.data import ImageDataset, balanced_subset
from advrepair.models import Classifier, ModelCard, build_model, load_checkpoint, read_card, save_checkpoint
from advrepair.models.checkpoint import checkpoint_paths
from advrepair.errors import CheckpointError
from advrepair.ssl import (AugmentConfig, ContrastiveHead, ContrastiveTask, SelfSupervisedTask, build_task,
                          check_task_name, task_from_checkpoint_parts)
from advrepair.training import ClassifierRecipe, SSLRecipe, train_classifier, train_ssl_task
from advrepair.training.checkpointing import EpochCheckpoint
from advrepair.zoo.metrics import accuracy_metric, ssl_loss_metrics

CLASSIFIER_FILE = "classifier"
CONTRASTIVE_FILE = "ssl-contrastive"

#: where trained-on-demand models and caches live (``$ADVREPAIR_HOME``)
DEFAULT_HOME = Path(os.environ.get("ADVREPAIR_HOME", Path.home() / ".cache" / "advrepair"))
#: the folder of models the experiments train on demand (``<dir>/<model name>/``)
DEFAULT_MODELS_DIR = DEFAULT_HOME / "models"

# The short recipes the experiments still train their own CNNs with (1-2 epochs; about 10
# minutes for both on 2 cores). The zoo's entries are the well-trained versions; experiments
# that have not moved to the zoo yet keep these so their reports stay reproducible.
QUICK_STANDARD = ClassifierRecipe(epochs=2)
QUICK_ADVERSARIAL = ClassifierRecipe(epochs=2, adversarial=True, eps=0.1, alpha=0.04, steps=3)
QUICK_SSL = SSLRecipe(epochs=1)


def _log(msg: str) -> None:
    tqdm.write(msg)


def classifier_metrics(model: Classifier, test: ImageDataset, eps: float, n_clean: int = 1000,
                       n_robust: int = 500, device: torch.device = torch.device("cpu")) -> list[dict[str, Any]]:
    """Clean and PGD-20 accuracy for the card, each with the attack, image count and s.e. behind it."""
    clean = balanced_subset(test, min(n_clean, len(test)), seed=0)
    robust = balanced_subset(test, min(n_robust, len(test)), seed=0)
    pgd = PGD(model, eps=eps, alpha=2.5 * eps / 20, steps=20)
    return [accuracy_metric(model, clean, None, metric="clean_accuracy", device=device, batch_size=250,
                            progress=False),
            accuracy_metric(model, robust, pgd, metric="robust_accuracy", device=device, batch_size=250,
                            progress=False)]


def ensure_classifier(model_dir: str | Path, train: ImageDataset, test: ImageDataset, *, arch: str,
                      recipe: ClassifierRecipe, seed: int, arch_config: dict[str, Any] | None = None,
                      eval_eps: float = 0.1, device: torch.device = torch.device("cpu"),
                      progress: bool = True) -> tuple[Classifier, ModelCard]:
    """Load ``model_dir/classifier`` if its card matches, else train, measure and save it."""
    stem = Path(model_dir) / CLASSIFIER_FILE
    wanted = dict(dataset=train.name, recipe=recipe.to_dict(), seed=seed, arch=arch)
    if checkpoint_paths(stem)[0].exists():
        card = read_card(stem)
        if all(getattr(card, k) == v for k, v in wanted.items()):
            model, card = load_checkpoint(stem, map_location=device, expected_kind="classifier")
            _log(f"reusing {stem}.safetensors ({_summary(card)})")
            if not isinstance(model, Classifier):
                raise CheckpointError(f"{stem}.safetensors holds a {type(model).__name__}, not a classifier")
            return model, card
        _log(f"{stem}.json records another recipe; retraining")
    config = dict(in_channels=train.image_shape[0], num_classes=train.num_classes,
                  input_size=train.image_shape[1], **(arch_config or {}))
    model = build_model(arch, **config)
    assert isinstance(model, Classifier)
    kind = "PGD adversarial" if recipe.adversarial else "standard"
    _log(f"training {arch} on {train.name} ({kind}, {recipe.epochs} epochs) -> {stem}.safetensors")
    resume = EpochCheckpoint(Path(model_dir) / f".{CLASSIFIER_FILE}-in-progress", {**wanted, "config": config})
    history = train_classifier(model, train, recipe, seed=seed, device=device, progress=progress, resume=resume)
    metrics = classifier_metrics(model, test, eval_eps, device=device)
    card = ModelCard(kind="classifier", arch=arch, config=model.config, dataset=train.name,
                     recipe=recipe.to_dict(), seed=seed, metrics=metrics, parent={"history": history})
    save_checkpoint(model, stem, card)
    _log(f"saved {stem}.safetensors ({_summary(card)})")
    return model, card


def _summary(card: ModelCard) -> str:
    parts = []
    for m in card.metrics:
        atk = m.get("attack")
        how = "clean" if not atk else f"{atk['name'].upper()}-{atk.get('steps')} eps={atk['eps']:.3g}"
        parts.append(f"{m['metric']}={100 * m['value']:.1f}% ({how}, n={m['n_images']})")
    return ", ".join(parts) or "no metrics"


def negative_bank(train: ImageDataset, size: int = 256, seed: int = 0) -> torch.Tensor:
    """The reverse attack's fixed negatives: a seeded, class-balanced set of clean training images."""
    return balanced_subset(train, min(size, len(train)), seed=seed).tensors()[0]


def load_contrastive_task(model_dir: str | Path, classifier_card: ModelCard, negatives: torch.Tensor,
                          n_views: int | None = None, device: torch.device = torch.device("cpu")) -> ContrastiveTask:
    """The contrastive task of ``model_dir``, checked to belong to its classifier."""
    stem = Path(model_dir) / CONTRASTIVE_FILE
    head, card = load_checkpoint(stem, map_location=device, expected_kind="ssl-contrastive")
    if card.parent.get("classifier_sha256") != classifier_card.weights_sha256:
        raise CheckpointError(f"{stem}.safetensors was trained on another classifier than "
                              f"{Path(model_dir) / CLASSIFIER_FILE}.safetensors; retrain it")
    task_cfg = card.parent.get("task", {})
    assert isinstance(head, ContrastiveHead)
    return ContrastiveTask(head, tau=task_cfg.get("tau", 0.2), n_views=n_views or task_cfg.get("n_views", 4),
                           augment_cfg=AugmentConfig.from_dict(task_cfg.get("augment", {})),
                           negatives=negatives.to(device)).eval()


def ensure_contrastive_task(model_dir: str | Path, classifier: Classifier, classifier_card: ModelCard,
                            train: ImageDataset, test: ImageDataset, *, recipe: SSLRecipe, seed: int,
                            negatives: torch.Tensor, tau: float = 0.2, n_views: int = 4,
                            eval_eps: float = 0.1, device: torch.device = torch.device("cpu"),
                            progress: bool = True) -> ContrastiveTask:
    """Load the contrastive head of ``model_dir`` if it matches, else train, measure and save it."""
    stem = Path(model_dir) / CONTRASTIVE_FILE
    if checkpoint_paths(stem)[0].exists():
        card = read_card(stem)
        same = (card.recipe == recipe.to_dict() and card.seed == seed
                and card.parent.get("classifier_sha256") == classifier_card.weights_sha256
                and card.parent.get("task", {}).get("tau") == tau)
        if same:
            _log(f"reusing {stem}.safetensors ({_ssl_summary(card)})")
            return load_contrastive_task(model_dir, classifier_card, negatives, n_views, device)
        _log(f"{stem}.json records another recipe or classifier; retraining")
    torch.manual_seed(seed)
    head = ContrastiveHead(classifier.feature_dim)
    task = ContrastiveTask(head, tau=tau, n_views=n_views, negatives=negatives.to(device))
    _log(f"training the contrastive head on {Path(model_dir).name}'s features ({recipe.epochs} epochs, tau={tau})")
    history = train_ssl_task(task, classifier, train, recipe, seed=seed, device=device, progress=progress)
    metrics = contrastive_metrics(classifier, task, test, eval_eps, device)
    card = ModelCard(kind="ssl-contrastive", arch=ContrastiveHead.arch, config=head.config, dataset=train.name,
                     recipe=recipe.to_dict(), seed=seed, metrics=metrics,
                     parent={"classifier_sha256": classifier_card.weights_sha256, "task": task.config(),
                             "history": history})
    save_checkpoint(head, stem, card)
    _log(f"saved {stem}.safetensors ({_ssl_summary(card)})")
    return task.eval()


def ssl_file(name: str) -> str:
    return f"ssl-{check_task_name(name)}"


def load_ssl_task(model_dir: str | Path, name: str, classifier_card: ModelCard, negatives: torch.Tensor | None = None,
                  device: torch.device = torch.device("cpu")) -> SelfSupervisedTask:
    """The ``name`` task of ``model_dir``, checked to belong to its classifier."""
    if name == "contrastive":
        assert negatives is not None, "the contrastive task needs its negative bank"
        return load_contrastive_task(model_dir, classifier_card, negatives, device=device)
    stem = Path(model_dir) / ssl_file(name)
    head, card = load_checkpoint(stem, map_location=device, expected_kind=ssl_file(name))
    if card.parent.get("classifier_sha256") != classifier_card.weights_sha256:
        raise CheckpointError(f"{stem}.safetensors was trained on another classifier than "
                              f"{Path(model_dir) / CLASSIFIER_FILE}.safetensors; retrain it")
    return task_from_checkpoint_parts(name, head, card.parent.get("task", {})).to(device).eval()


def ensure_ssl_task(model_dir: str | Path, name: str, classifier: Classifier, classifier_card: ModelCard,
                    train: ImageDataset, test: ImageDataset, *, recipe: SSLRecipe, seed: int,
                    negatives: torch.Tensor | None = None, task_options: dict[str, Any] | None = None,
                    eval_eps: float = 0.1, device: torch.device = torch.device("cpu"),
                    progress: bool = True) -> SelfSupervisedTask:
    """Load the ``name`` head of ``model_dir`` if its card matches, else train, measure and save it."""
    if name == "contrastive":
        opts = dict(task_options or {})
        assert negatives is not None, "the contrastive task needs its negative bank"
        return ensure_contrastive_task(model_dir, classifier, classifier_card, train, test, recipe=recipe, seed=seed,
                                       negatives=negatives, tau=opts.get("tau", 0.2),
                                       n_views=opts.get("n_views", 4), eval_eps=eval_eps, device=device,
                                       progress=progress)
    stem = Path(model_dir) / ssl_file(name)
    options = json.loads(json.dumps(task_options or {}))  # as the card will hold them (tuples -> lists)
    if checkpoint_paths(stem)[0].exists():
        card = read_card(stem)
        same = (card.recipe == recipe.to_dict() and card.seed == seed
                and card.parent.get("classifier_sha256") == classifier_card.weights_sha256
                and card.parent.get("options") == options)
        if same:
            _log(f"reusing {stem}.safetensors ({_ssl_summary(card)})")
            return load_ssl_task(model_dir, name, classifier_card, device=device)
        _log(f"{stem}.json records another recipe, options or classifier; retraining")
    torch.manual_seed(seed)
    task = build_task(name, classifier, **options).to(device)
    _log(f"training the {name} head of {Path(model_dir).name} ({recipe.epochs} epochs)")
    history = train_ssl_task(task, classifier, train, recipe, seed=seed, device=device, progress=progress)
    metrics = contrastive_metrics(classifier, task, test, eval_eps, device)
    head: Any = task.head  # ContrastiveHead, RotationHead or InpaintingNet: each has arch and config
    card = ModelCard(kind=ssl_file(name), arch=head.arch, config=head.config, dataset=train.name,
                     recipe=recipe.to_dict(), seed=seed, metrics=metrics,
                     parent={"classifier_sha256": classifier_card.weights_sha256, "task": task.config(),
                             "options": options, "history": history})
    save_checkpoint(head, stem, card)
    _log(f"saved {stem}.safetensors ({_ssl_summary(card)})")
    return task.eval()


def contrastive_metrics(classifier: Classifier, task: SelfSupervisedTask, test: ImageDataset, eps: float,
                        device: torch.device, n: int = 500) -> list[dict[str, Any]]:
    """Mean L_s on clean and on PGD images: mao2021's premise is that attacks raise it."""
    return ssl_loss_metrics(classifier, task, test, eps, device=device, n=n)


def _ssl_summary(card: ModelCard) -> str:
    m = {d["metric"]: d["value"] for d in card.metrics}
    return (f"mean L_s clean {m.get('mean_ssl_loss_clean', float('nan')):.3f} vs PGD-20 "
            f"{m.get('mean_ssl_loss_attacked', float('nan')):.3f}")
