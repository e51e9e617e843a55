"""Seeded training loops with progress bars, for classifiers and self-supervised heads."""
from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from advrepair.runtime import prepare_images, prepare_module, resolve_device
from advrepair.attacks import PGD
from advrepair.data import ImageDataset
from advrepair.errors import InputError
from advrepair.models.base import Classifier
from advrepair.seeding import seed_everything
from advrepair.ssl.task import SelfSupervisedTask
from advrepair.training.checkpointing import EpochCheckpoint
from advrepair.training.recipe import ClassifierRecipe, SSLRecipe


def _epoch_batches(data: ImageDataset, batch_size: int, gen: torch.Generator,
                   subset: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = len(data) if subset is None else min(subset, len(data))
    order = torch.randperm(len(data), generator=gen)[:n]
    for start in range(0, n, batch_size):
        yield data.tensors(order[start : start + batch_size])


def _check_data_fits(model: nn.Module, data: Any, recipe: Any, recipe_type: type, *,
                     labels: bool) -> None:
    """Refuse, before any training, data or a recipe that cannot train ``model``."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(recipe, recipe_type):
        raise InputError(f"recipe must be a {recipe_type.__name__}, got {type(recipe).__name__}")
    if not isinstance(data, ImageDataset):
        raise InputError(f"data must be an ImageDataset, got {type(data).__name__}")
    if len(data) == 0:
        raise InputError(f"the training set {data.name!r} is empty: there is nothing to train on")
    c, h, w = data.image_shape
    channels, size = getattr(model, "in_channels", None), getattr(model, "input_size", None)
    if isinstance(channels, int) and channels != c:
        raise InputError(f"the model takes {channels}-channel images but {data.name!r} has {c}-channel images "
                         f"of shape {data.image_shape}")
    if isinstance(size, int) and getattr(model, "fixed_size", True) and (h, w) != (size, size):
        raise InputError(f"the model takes {size}x{size} images but {data.name!r} has {h}x{w} images")
    classes = getattr(model, "num_classes", None)
    if labels and isinstance(classes, int) and data.num_classes > classes:
        raise InputError(f"{data.name!r} has {data.num_classes} classes but the model has {classes} outputs")


def _optimizer(params: Any, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; expected 'adam' or 'sgd'")


def _lr_factor(schedule: str, progress: float) -> float:
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {schedule!r}; expected 'cosine' or 'constant'")


def _run_epochs(params: list[nn.Parameter], data: ImageDataset, *, epochs: int, batch_size: int,
                subset: int | None, optimizer: str, lr: float, weight_decay: float, schedule: str,
                seed: int, device: torch.device, desc: str, progress: bool,
                step: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
                on_epoch_start: Callable[[], None] = lambda: None,
                on_epoch_end: Callable[[dict[str, float]], bool] = lambda _entry: False,
                resume: EpochCheckpoint | None = None) -> list[dict[str, float]]:
    """The shared loop; ``on_epoch_end`` may add to the epoch's history entry and returns
    True to stop training early."""
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = _optimizer(params, optimizer, lr, weight_decay)
    n = len(data) if subset is None else min(subset, len(data))
    if n == 0:
        raise InputError(f"the training set {getattr(data, 'name', '')!r} is empty: there is nothing to train on")
    per_epoch = math.ceil(n / batch_size)
    total, done = epochs * per_epoch, 0
    history: list[dict[str, float]] = []
    first = 0
    if resume is not None:
        restored = resume.restore(params, opt, gen)
        if restored is not None:
            first, history = restored
            done = first * per_epoch
            if progress:
                tqdm.write(f"{desc}: resuming after epoch {first}/{epochs} from {resume.stem}")
    for epoch in range(first, epochs):
        on_epoch_start()
        bar = tqdm(_epoch_batches(data, batch_size, gen, subset), total=per_epoch,
                   desc=f"{desc} epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        loss_sum, count = 0.0, 0
        for x, y in bar:
            for group in opt.param_groups:
                group["lr"] = lr * _lr_factor(schedule, done / total)
            loss = step(x.to(device), y.to(device), epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            loss_sum += float(loss.detach()) * x.shape[0]
            count += x.shape[0]
            bar.set_postfix(loss=f"{loss_sum / count:.4f}")
        history.append({"epoch": epoch + 1, "loss": loss_sum / max(count, 1)})
        stop = on_epoch_end(history[-1])
        if progress:
            extra = "".join(f", {k} {v:.4f}" for k, v in history[-1].items() if k not in ("epoch", "loss"))
            tqdm.write(f"{desc} epoch {epoch + 1}/{epochs}: loss {history[-1]['loss']:.4f}{extra}")
        if stop:
            break
        if resume is not None and epoch + 1 < epochs:
            resume.save(epoch + 1, history, params, opt, gen)
    if resume is not None:
        resume.clear()
    return history


def train_classifier(model: Classifier, data: ImageDataset, recipe: ClassifierRecipe, *, seed: int = 0,
                     device: str | torch.device = "cpu", progress: bool = True,
                     resume: EpochCheckpoint | None = None) -> list[dict[str, float]]:
    """Train ``model`` in place (standard or PGD adversarial training); returns per-epoch losses.
    With ``resume``, state is saved after every epoch and a rerun continues after the last one.

    Raises:
        InputError: an empty dataset, or images / classes that do not fit the model.
    """
    _check_data_fits(model, data, recipe, ClassifierRecipe, labels=True)
    device = resolve_device(device)
    prepare_module(model, device, channels_last=recipe.channels_last)
    augment = recipe_augmentation(recipe, seed)

    def step(x: torch.Tensor, y: torch.Tensor, epoch: int) -> torch.Tensor:
        x = prepare_images(augment(x, epoch), device, channels_last=recipe.channels_last)
        if recipe.adversarial:
            model.eval()  # craft in eval mode so BatchNorm statistics see only training inputs
            x = PGD(model, eps=recipe.eps, alpha=recipe.alpha, steps=recipe.steps,
                    seed=seed * 1000 + epoch)(x, y)
        model.train()
        return F.cross_entropy(model(x), y)

    desc = "adv-train" if recipe.adversarial else "train"
    history = _run_epochs(list(model.parameters()), data, epochs=recipe.epochs, batch_size=recipe.batch_size,
                          subset=recipe.train_subset, optimizer=recipe.optimizer, lr=recipe.lr,
                          weight_decay=recipe.weight_decay, schedule=recipe.schedule, seed=seed,
                          device=device, desc=desc, progress=progress, step=step, resume=resume)
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # checkpoints store contiguous tensors
    model.eval()
    return history


def recipe_augmentation(recipe: ClassifierRecipe, seed: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """``(batch, epoch) -> batch``: the recipe's flips and shifts (the identity without
    ``augment``), seeded by (seed, epoch, batch index) so a resumed run draws the same ones.
    Call it once per batch, in order."""
    batch_in_epoch = {"epoch": -1, "index": 0}

    def augment(x: torch.Tensor, epoch: int) -> torch.Tensor:
        if not recipe.augment:
            return x
        if batch_in_epoch["epoch"] != epoch:
            batch_in_epoch.update(epoch=epoch, index=0)
        gen = torch.Generator().manual_seed((seed * 100_003 + epoch) * 100_003 + batch_in_epoch["index"])
        batch_in_epoch["index"] += 1
        return flip_and_shift(x, gen)

    return augment


def flip_and_shift(images: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Each image flipped left-right with probability 1/2 and shifted by up to ``max_shift``
    pixels in each direction, the uncovered border filled with zeros. Shapes: (B, C, H, W)."""
    b, _, h, w = images.shape
    flip = torch.rand(b, generator=gen) < 0.5
    shifts = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=gen)
    out = torch.where(flip.view(b, 1, 1, 1).to(images.device), images.flip(-1), images)
    padded = F.pad(out, (max_shift,) * 4)
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(shifts.tolist())])


def _heldout_ssl_loss(task: SelfSupervisedTask, backbone: Classifier, heldout: ImageDataset, seed: int,
                      device: torch.device, batch_size: int = 128) -> float:
    """Mean training loss on held-out images with fixed draws, comparable across epochs."""
    gen = torch.Generator().manual_seed(seed + 7)
    task.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, _ in heldout.batches(batch_size):
            u = torch.rand((x.shape[0], *task.training_numbers_per_image), generator=gen).to(device)
            total += float(task.training_loss(backbone, x.to(device), u)) * x.shape[0]
            count += x.shape[0]
    task.train()
    return total / count


def train_ssl_task(task: SelfSupervisedTask, backbone: Classifier, data: ImageDataset, recipe: SSLRecipe, *,
                   seed: int = 0, device: str | torch.device = "cpu", progress: bool = True,
                   heldout: ImageDataset | None = None) -> list[dict[str, float]]:
    """Fit a task's head on clean images; the classifier stays frozen in eval mode.

    With ``heldout`` images, each epoch's history entry gets ``heldout_loss``; with
    ``recipe.patience`` training also stops once that loss has not improved for
    ``patience`` epochs and the best epoch's weights are kept (its entry is marked
    ``"best": 1.0``).

    Raises:
        InputError: an empty dataset, or images that do not fit the classifier.
    """
    if not isinstance(task, SelfSupervisedTask):
        raise InputError(f"task must be a SelfSupervisedTask, got {type(task).__name__}")
    _check_data_fits(backbone, data, recipe, SSLRecipe, labels=False)
    if recipe.patience is not None and heldout is None:
        raise InputError("an SSLRecipe with patience needs held-out images (heldout=...) to stop on")
    if heldout is not None:
        _check_data_fits(backbone, heldout, recipe, SSLRecipe, labels=False)
    device = resolve_device(device)
    backbone.to(device).eval()
    task.to(device)
    for p in backbone.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed + 1)

    def step(x: torch.Tensor, _y: torch.Tensor, _epoch: int) -> torch.Tensor:
        u = torch.rand((x.shape[0], *task.training_numbers_per_image), generator=gen).to(device)
        return task.training_loss(backbone, x, u)

    best: dict[str, Any] = {"loss": math.inf, "state": None, "entry": None, "since": 0}

    def on_epoch_end(entry: dict[str, float]) -> bool:
        if heldout is None:
            return False
        entry["heldout_loss"] = _heldout_ssl_loss(task, backbone, heldout, seed, device)
        if entry["heldout_loss"] < best["loss"]:
            best.update(loss=entry["heldout_loss"], entry=entry, since=0,
                        state={k: v.detach().clone() for k, v in task.state_dict().items()})
        else:
            best["since"] += 1
        return recipe.patience is not None and best["since"] >= recipe.patience

    def start_epoch() -> None:
        task.train()

    try:
        history = _run_epochs([p for p in task.parameters() if p.requires_grad], data, epochs=recipe.epochs,
                              batch_size=recipe.batch_size, subset=recipe.train_subset, optimizer="adam",
                              lr=recipe.lr, weight_decay=0.0, schedule="constant", seed=seed, device=device,
                              desc=f"ssl-{task.name}", progress=progress, step=step,
                              on_epoch_start=start_epoch, on_epoch_end=on_epoch_end)
    finally:
        for p in backbone.parameters():
            p.requires_grad_(True)
    if recipe.patience is not None and best["state"] is not None:
        task.load_state_dict(best["state"])
        best["entry"]["best"] = 1.0
    task.eval()
    return history
