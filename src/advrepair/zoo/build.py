"""Training a zoo entry from its recipe, and comparing the result with the shipped card.

CPU training here is deterministic for a fixed torch version and thread count, so a
rebuild on the same set-up gives the shipped weights bit for bit (the SHA-256 matches).
Elsewhere (another torch, another thread count, a GPU) the rebuild is accepted when every
accuracy on the card is within ``TOLERANCE`` of the shipped one.
"""
from __future__ import annotations

import copy
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from advrepair.data import ImageDataset, balanced_subset, load_dataset
from advrepair.models import Classifier, ModelCard, build_model, save_checkpoint
from advrepair.models.checkpoint import read_card
from advrepair.runtime import prepare_module
from advrepair.ssl import ContrastiveHead, ContrastiveTask, build_task
from advrepair.training import ClassifierRecipe, SSLRecipe, train_classifier, train_ssl_task
from advrepair.training.adversarial_transformation import train_on_transformation
from advrepair.training.checkpointing import EpochCheckpoint
from advrepair.defenses.adversarial_transformation import AdversarialTransformation
from advrepair.defenses.purifier import save_purifier
from advrepair.models.purifier import Purifier
from advrepair.training.purifier import PurifierRecipe, train_purifier
from advrepair.zoo.metrics import (ROBUST_IMAGES, accuracy_metric, classifier_metrics, defended_metrics,
                                   purifier_metrics, ssl_loss_metrics)
from advrepair.zoo.registry import NEGATIVES, ZooEntry, ZooKind, build_order, entry
from advrepair.zoo.store import card as shipped_card
from advrepair.zoo.store import (is_shipped, load, load_negatives, save_tensor_file, transformation_from,
                                 weights_dir)

#: accepted gap between a rebuilt and a shipped accuracy when the weights differ (fraction):
#: about two binomial standard errors of a 1,000-image robust accuracy
TOLERANCE = {"clean_accuracy": 0.01, "robust_accuracy": 0.03}
#: the thread count every shipped entry was trained with (reductions depend on it)
TRAINING_THREADS = 2


@dataclass
class BuildResult:
    name: str
    seconds: float
    card: ModelCard
    identical: bool | None  # None: nothing shipped to compare with
    differences: list[str] = field(default_factory=list)

    @property
    def matches(self) -> bool:
        return self.identical is None or self.identical or not self.differences


def _provenance(seconds: float) -> dict[str, Any]:
    return {"training_seconds": round(seconds, 1), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()}


def _splits(e: ZooEntry, data_root: str | None) -> tuple[ImageDataset, ImageDataset | None, ImageDataset]:
    train = load_dataset(e.dataset, split="train", root=data_root)
    test = load_dataset(e.dataset, split="test", root=data_root)
    if e.heldout:
        n = len(train)
        return train.subset(list(range(n - e.heldout))), train.subset(list(range(n - e.heldout, n))), test
    return train, None, test


def _build_negatives(e: ZooEntry, out: Path, data_root: str | None) -> ModelCard:
    train = load_dataset(e.dataset, split="train", root=data_root)
    images = balanced_subset(train, e.config["size"], seed=e.seed).tensors()[0]
    as_bytes = torch.round(images * 255).to(torch.uint8)
    model_card = ModelCard(kind="negative-bank", arch="uint8-images", config=dict(e.config), dataset=train.name,
                           seed=e.seed, parent={"split": "train", "selection": "balanced_subset"})
    save_tensor_file({"images": as_bytes}, out / e.name, model_card)
    return model_card


def _build_classifier(e: ZooEntry, out: Path, data_root: str | None, device: torch.device, progress: bool,
                      autoattack: bool) -> ModelCard:
    assert e.arch is not None and (e.recipe is None or isinstance(e.recipe, ClassifierRecipe))
    train, _, test = _splits(e, data_root)
    config = dict(in_channels=train.image_shape[0], num_classes=train.num_classes, input_size=train.image_shape[1],
                  **e.config)
    torch.manual_seed(e.seed)
    model = build_model(e.arch, **config)
    assert isinstance(model, Classifier)
    recipe = e.recipe.to_dict() if e.recipe is not None else {"untrained": True}
    resume = EpochCheckpoint(out / f".{e.name}-in-progress", {"entry": e.name, "recipe": recipe,
                                                              "seed": e.seed, "config": config})
    transform = _parent_transformation(e, out, device)
    start = time.perf_counter()
    history: list[dict[str, float]] = []
    if e.recipe is not None and transform is not None:
        history = train_on_transformation(model, transform, train, e.recipe, seed=e.seed, device=device,
                                          progress=progress, resume=resume)
    elif e.recipe is not None:
        history = train_classifier(model, train, e.recipe, seed=e.seed, device=device, progress=progress,
                                   resume=resume)
    model.to(device).eval()
    seconds = time.perf_counter() - start
    parent: dict[str, Any] = {"zoo_name": e.name, "history": history, "provenance": _provenance(seconds)}
    if transform is not None:
        parent.update(f_b=e.parent, f_b_sha256=_card_of(e.parent, out).weights_sha256, transform=transform.params())
    model_card = ModelCard(kind="classifier", arch=e.arch, config=model.config, dataset=train.name,
                           recipe=recipe, seed=e.seed, metrics=[], parent=parent)
    save_checkpoint(model, out / e.name, model_card)  # the weights are safe before the long measurements
    # measured in the layout it was trained in; the checkpoint keeps contiguous tensors
    measured = prepare_module(copy.deepcopy(model), device, channels_last=True) \
        if isinstance(e.recipe, ClassifierRecipe) and e.recipe.channels_last else model
    model_card.metrics = classifier_metrics(measured, test, e.eval_eps, device=device,
                                            autoattack=autoattack and e.autoattack, progress=progress)
    if transform is not None:
        model_card.metrics += defended_metrics(model, transform, test, e.eval_eps, device=device, progress=progress)
    save_checkpoint(model, out / e.name, model_card)
    return model_card


def _card_of(name: str | None, out: Path) -> ModelCard:
    assert name is not None
    return shipped_card(name, out if is_shipped(name, out) else None)


def _parent_transformation(e: ZooEntry, out: Path, device: torch.device) -> AdversarialTransformation | None:
    """g on the parent f_b (from ``out`` when built there, else shipped), in the recipe's layout."""
    if not e.transform:
        return None
    f_b, _ = load(e.parent or "", device, folder=out if is_shipped(e.parent or "", out) else None,
                  channels_last=False)
    assert isinstance(f_b, nn.Module)
    return transformation_from(f_b, e.transform)


def _build_head(e: ZooEntry, out: Path, data_root: str | None, device: torch.device, progress: bool) -> ModelCard:
    assert isinstance(e.recipe, SSLRecipe) and e.parent is not None
    # the layout the recipe was trained in: channels-last would change the head's float sums
    classifier, parent = load(e.parent, device, folder=out if is_shipped(e.parent, out) else None,
                              channels_last=False)
    assert isinstance(classifier, Classifier)
    train, heldout, test = _splits(e, data_root)
    options = {k: v for k, v in e.task.items() if k != "name"}
    torch.manual_seed(e.seed)
    if e.task["name"] == "contrastive":
        folder = out if is_shipped(NEGATIVES, out) else None
        task: Any = ContrastiveTask(ContrastiveHead(classifier.feature_dim), negatives=load_negatives(folder, device),
                                    **options)
    else:
        task = build_task(e.task["name"], classifier, **options)
    task.to(device)
    start = time.perf_counter()
    history = train_ssl_task(task, classifier, train, e.recipe, seed=e.seed, device=device, progress=progress,
                             heldout=heldout)
    seconds = time.perf_counter() - start
    best = next((h["epoch"] for h in history if h.get("best")), len(history))
    head = task.head
    model_card = ModelCard(kind=f"ssl-{e.task['name']}", arch=head.arch, config=head.config, dataset=train.name,
                           recipe=e.recipe.to_dict(), seed=e.seed,
                           metrics=ssl_loss_metrics(classifier, task, test, e.eval_eps, device=device),
                           parent={"zoo_name": e.name, "classifier": e.parent,
                                   "classifier_sha256": parent.weights_sha256, "task": task.config(),
                                   "options": options, "history": history, "stopping_epoch": int(best),
                                   "heldout_images": e.heldout, "provenance": _provenance(seconds)})
    save_checkpoint(head, out / e.name, model_card)
    return model_card


def _build_purifier(e: ZooEntry, out: Path, data_root: str | None, device: torch.device,
                    progress: bool) -> ModelCard:
    assert isinstance(e.recipe, PurifierRecipe) and e.parent is not None
    feature_model, parent = load(e.parent, device, folder=out if is_shipped(e.parent, out) else None,
                                 channels_last=False)
    assert isinstance(feature_model, Classifier)
    train, _, test = _splits(e, data_root)
    c, h, _ = train.image_shape
    torch.manual_seed(e.seed)
    purifier = Purifier(in_channels=c, **e.config)
    critic = e.recipe.critic(c, h)
    start = time.perf_counter()
    history = train_purifier(purifier, critic, feature_model, None, train, e.recipe, device=device,
                             progress=progress)
    seconds = time.perf_counter() - start
    purifier.eval()
    probe = balanced_subset(test, min(ROBUST_IMAGES, len(test)), seed=0)
    metrics = purifier_metrics(purifier, feature_model, e.recipe.layer or "", probe, e.recipe, device)
    # the clean cost of purifying, on the feature network itself (its own card has it unpurified)
    metrics.append(accuracy_metric(nn.Sequential(purifier, feature_model), test, None,
                                   metric="clean_accuracy_purified", device=device, progress=progress))
    save_purifier(purifier, out / e.name, feature_model=parent.weights_sha256, layer=e.recipe.layer,
                  recipe=e.recipe.card_dict(critic), dataset=train.name, seed=e.seed,
                  metrics=metrics, provenance={"zoo_name": e.name, "classifier": e.parent, "history": history,
                                               "provenance": _provenance(seconds)})
    return read_card(out / e.name)


def same_tensors(a: Path, b: Path) -> bool:
    """Every tensor of two safetensors files equal, bit for bit. (The files' own bytes are
    no test: safetensors writes its metadata in hash-map order.)"""
    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]) for k in ta)


def _compare(new: ModelCard, old: ModelCard, new_path: Path, old_path: Path) -> tuple[bool, list[str]]:
    identical = new.weights_sha256 == old.weights_sha256 or same_tensors(new_path, old_path)
    differences = []
    for m_new, m_old in zip(new.metrics, old.metrics):
        limit = TOLERANCE.get(m_new["metric"].removesuffix("_defended"))
        gap = abs(m_new["value"] - m_old["value"])
        if limit is not None and gap > limit:
            differences.append(f"{m_new['metric']} {100 * m_new['value']:.2f}% vs shipped {100 * m_old['value']:.2f}% "
                               f"(tolerance {100 * limit:.1f} points)")
    if len(new.metrics) < len(old.metrics):
        differences.append("fewer metrics measured than on the shipped card")
    return identical, differences


def build_entry(name: str, out: Path, *, data_root: str | None = None, device: torch.device = torch.device("cpu"),
                progress: bool = True, autoattack: bool = True) -> BuildResult:
    """Train ``name`` from its recipe into ``out`` (parents from ``out`` when built there,
    else from the shipped zoo), measure it and compare with the shipped card."""
    e = entry(name)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAINING_THREADS)
    start = time.perf_counter()
    try:
        if e.kind is ZooKind.NEGATIVE_BANK:
            new = _build_negatives(e, out, data_root)
        elif e.kind is ZooKind.CLASSIFIER:
            new = _build_classifier(e, out, data_root, device, progress, autoattack)
        elif e.kind is ZooKind.PURIFIER:
            new = _build_purifier(e, out, data_root, device, progress)
        else:
            new = _build_head(e, out, data_root, device, progress)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    if out.resolve() == weights_dir().resolve() or not is_shipped(name):
        return BuildResult(name, seconds, new, None)
    identical, differences = _compare(new, shipped_card(name), out / f"{e.name}.safetensors",
                                      weights_dir() / f"{e.name}.safetensors")
    return BuildResult(name, seconds, new, identical, differences)


def build(names: list[str], out: Path, **kwargs: Any) -> list[BuildResult]:
    """Build ``names``, and first every parent they need that is neither in ``out`` nor shipped."""
    results = []
    for name in build_order(names):
        if name not in names and (is_shipped(name, out) or is_shipped(name)):
            continue
        results.append(build_entry(name, out, **kwargs))
        r = results[-1]
        verdict = ("written" if r.identical is None else "bit-identical to the shipped weights" if r.identical
                   else "within tolerance of the shipped card" if not r.differences
                   else "DIFFERS from the shipped card: " + "; ".join(r.differences))
        tqdm.write(f"zoo build {name}: {r.seconds:.0f} s, {verdict}")
    return results


__all__ = ["BuildResult", "TOLERANCE", "build", "build_entry", "same_tensors"]
