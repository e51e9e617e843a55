"""Reading the shipped zoo: files in ``zoo/weights`` (safetensors + JSON card), checked
against the card's SHA-256 before any tensor is used. Nothing is downloaded or unpickled."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from advrepair.defenses.adversarial_transformation import AdversarialTransformation
from advrepair.defenses.purifier import load_purifier
from advrepair.durable import write_durably, write_text_durably
from advrepair.errors import CheckpointError, InputError
from advrepair.models import Classifier, ModelCard, load_checkpoint, read_card
from advrepair.models.checkpoint import checkpoint_paths, sha256_file
from advrepair.runtime import prepare_module
from advrepair.ssl import AugmentConfig, ContrastiveHead, ContrastiveTask, SelfSupervisedTask, task_from_checkpoint_parts
from advrepair.zoo.registry import NEGATIVES, ZooKind, entry

SHIPPED_DIR = Path(__file__).resolve().parent / "weights"


def weights_dir() -> Path:
    """Where the zoo's files are read from: ``$ADVREPAIR_ZOO_DIR`` if set, else the package's."""
    override = os.environ.get("ADVREPAIR_ZOO_DIR")
    return Path(override) if override else SHIPPED_DIR


def is_shipped(name: str, folder: Path | None = None) -> bool:
    weights, card = checkpoint_paths((folder or weights_dir()) / entry(name).name)
    return weights.exists() and card.exists()


def card(name: str, folder: Path | None = None) -> ModelCard:
    """The card of the shipped entry ``name`` (its weights are not read)."""
    e = entry(name)
    stem = (folder or weights_dir()) / e.name
    if not is_shipped(name, folder):
        raise CheckpointError(f"zoo entry {name!r} is registered but its files are not in {stem.parent}; "
                              f"`advrepair zoo build {name}` trains it")
    return read_card(stem)


def save_tensor_file(tensors: dict[str, torch.Tensor], stem: Path, model_card: ModelCard) -> None:
    """Data entries (the negative bank): tensors in safetensors, described by a card."""
    weights, card_path = checkpoint_paths(stem)
    weights.parent.mkdir(parents=True, exist_ok=True)
    blob = save({k: v.contiguous() for k, v in tensors.items()})
    write_durably(weights, lambda f: f.write(blob))
    model_card.weights_sha256 = sha256_file(weights)
    write_text_durably(card_path, model_card.to_json())


def load_tensor_file(stem: Path) -> tuple[dict[str, torch.Tensor], ModelCard]:
    weights, _ = checkpoint_paths(stem)
    model_card = read_card(stem)
    actual = sha256_file(weights)
    if actual != model_card.weights_sha256:
        raise CheckpointError(f"{weights} does not match its card: SHA-256 {actual[:12]}... but the card says "
                              f"{model_card.weights_sha256[:12]}...")
    return load_file(str(weights)), model_card


def load_negatives(folder: Path | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
    """The contrastive task's negative bank as float images in [0, 1]."""
    card(NEGATIVES, folder)
    tensors, _ = load_tensor_file((folder or weights_dir()) / NEGATIVES)
    return (tensors["images"].to(torch.float32) / 255.0).to(device)


def load(name: str, device: str | torch.device = "cpu", *, folder: Path | None = None,
         channels_last: bool | None = None) -> tuple[nn.Module | torch.Tensor, ModelCard]:
    """Load a zoo entry by name, in eval mode, with its card.

    Convolutional networks come in channels-last layout unless ``channels_last=False``
    (``runtime.prepare_module``: the same predictions, about 2x faster on the CPU).

    A classifier comes back as the ``Classifier``; a self-supervised head as its ready
    task (the contrastive task with its negative bank), so

        >>> clf, _ = zoo.load("fmnist-cnn-pgd")
        >>> task, _ = zoo.load("fmnist-cnn-pgd-contrastive")
        >>> defense = ReverseAttack(clf, task, eps_v=0.2)      # mao2021 in one line

    A purifier comes back as the ``Purifier`` (a defense: images to images, refused when its
    card names other feature-network weights than its parent's), so
    ``nn.Sequential(zoo.load("fmnist-nrp-purifier")[0], classifier)`` is NRP's defended model.
    The negative bank entry comes back as a (256, 1, 28, 28) float tensor.

    Raises:
        InputError: an unknown name.
        CheckpointError: the files are missing, or the weights do not match the card.
    """
    e = entry(name)
    folder = folder or weights_dir()
    model_card = card(name, folder)
    if e.kind is ZooKind.NEGATIVE_BANK:
        return load_negatives(folder, device), model_card
    if e.kind is ZooKind.PURIFIER:
        parent_card = card(e.parent or "", folder)
        try:
            purifier, model_card = load_purifier(folder / e.name, map_location=device,
                                                 feature_model=parent_card.weights_sha256)
        except CheckpointError as err:
            raise CheckpointError(f"zoo purifier {name!r}: {err}; rebuild it") from err
        return prepare_module(purifier, device, channels_last), model_card
    module, model_card = load_checkpoint(folder / e.name, map_location=device)
    if e.kind is ZooKind.CLASSIFIER:
        if not isinstance(module, Classifier):
            raise CheckpointError(f"zoo entry {name!r} is not a classifier checkpoint")
        return prepare_module(module, device, channels_last), model_card
    parent_card = card(e.parent or "", folder)
    if model_card.parent.get("classifier_sha256") != parent_card.weights_sha256:
        raise CheckpointError(f"zoo head {name!r} was trained on other weights than {e.parent!r}; rebuild it")
    task = ssl_task(e.task["name"], module, model_card.parent.get("task", {}), folder, device)
    return prepare_module(task, device, channels_last), model_card


def ssl_task(task_name: str, head: nn.Module, task_config: dict[str, Any], folder: Path | None,
             device: str | torch.device) -> SelfSupervisedTask:
    if task_name == "contrastive":
        if not isinstance(head, ContrastiveHead):
            raise CheckpointError("a contrastive zoo head must hold a ContrastiveHead")
        return ContrastiveTask(head, tau=task_config.get("tau", 0.2), n_views=task_config.get("n_views", 4),
                               augment_cfg=AugmentConfig.from_dict(task_config.get("augment", {})),
                               negatives=load_negatives(folder, device)).to(device).eval()
    if task_name not in ("rotation", "inpainting"):
        raise InputError(f"unknown self-supervised task {task_name!r}")
    return task_from_checkpoint_parts(task_name, head, task_config).to(device).eval()


def transformation_from(f_b: nn.Module, settings: dict[str, Any]) -> AdversarialTransformation:
    """xiao2020's ``g`` on ``f_b`` with an entry's ``transform`` settings."""
    if settings.get("name") != "adversarial-transformation":
        raise InputError(f"unknown input transformation {settings.get('name')!r}")
    for p in f_b.parameters():
        p.requires_grad_(False)  # f_b is fixed
    return AdversarialTransformation(f_b, delta=settings["delta"], steps=settings["steps"], seed=settings["seed"])


def load_defended(name: str, device: str | torch.device = "cpu", *, folder: Path | None = None,
                  channels_last: bool | None = None) -> tuple[AdversarialTransformation, nn.Module, ModelCard]:
    """A classifier trained on an input transformation (xiao2020's f_a) with its defense:
    ``(g, f_a, card)``, so ``nn.Sequential(g, f_a)`` is the deployed model.

        >>> g, f_a, _ = zoo.load_defended("fmnist-cnn-xiao")
        >>> defended = nn.Sequential(g, f_a)

    Raises:
        InputError: an unknown name, or an entry that is not trained on a transformation.
        CheckpointError: missing files, weights that do not match the card, or an f_a whose card
            names other f_b weights than the shipped parent's.
    """
    e = entry(name)
    if not e.transform:
        raise InputError(f"zoo entry {name!r} is not trained on an input transformation")
    f_a, model_card = load(name, device, folder=folder, channels_last=channels_last)
    f_b, f_b_card = load(e.parent or "", device, folder=folder, channels_last=channels_last)
    if model_card.parent.get("f_b_sha256") != f_b_card.weights_sha256:
        raise CheckpointError(f"zoo entry {name!r} was trained through other f_b weights than {e.parent!r}; rebuild it")
    assert isinstance(f_a, nn.Module) and isinstance(f_b, nn.Module)
    return transformation_from(f_b, e.transform), f_a, model_card
