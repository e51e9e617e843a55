"""Training with the adversarial transformation (xiao2020, Eq. 1), its cost, and the
reparameterization network of the paper's attack study (Sec. 3.3 and 4.1).

- :func:`train_on_transformation`: Eq. 1, ``theta* = argmin E[l(f_a(g(x); theta), y)]``
  with cross-entropy, g recomputed for every batch with a fresh random start each epoch
  (the paper's "the same pipeline is applied in both training and inference"). It is
  :func:`advrepair.training.loops.train_classifier`'s loop (same optimizer, schedule,
  seeding and progress bars) with g applied to each batch.
- :class:`PassCounter`, :func:`measure_training_cost`, :func:`compare_training_cost`:
  wall-clock seconds and forward/backward passes (in images) per network, so that
  training on g (N passes through the small f_b) can be compared with PGD adversarial
  training of the same f_a (passes through f_a itself) in the same run (Sec. 3.4,
  "Computational performance", and Sec. 5).
- :class:`Reparameterization` and :func:`fit_imitator`: a small fully convolutional
  network ``h`` trained to imitate g, ``min E ||h(x) - g(x)||^2`` (Sec. 4.1,
  "Reparameterization"); the attack then differentiates ``f_a(h(x))`` while the forward
  pass keeps ``f_a(g(x))``: ``nn.Sequential(BPDA(g, h), f_a)`` with
  :class:`advrepair.adaptive.bpda.BPDA`.

Deviations and choices the paper leaves open:
- The paper trains f_a with SGD (lr 0.1, momentum 0.9, 80 epochs); we take the recipe's
  optimizer and schedule (:class:`advrepair.training.recipe.ClassifierRecipe`), so a
  comparison with adversarial training uses the same loop for both.
- g's random start in epoch e is drawn from the stream ``train-{seed}-{e}`` (per image,
  content-seeded), so a run is reproducible and each epoch sees new draws.
- The paper's FCN for h is in its Appendix A.2, which we do not have: ours is a few 3x3
  convolutions predicting a residual, ``h(x) = clip(x + Delta * tanh(r(x)), 0, 1)``, so
  h's output stays in the Delta ball like g's. It is trained with Adam on fresh draws of
  g each epoch, so it imitates E[g(x)] more than any single draw.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from advrepair.runtime import resolve_device
from advrepair.data import ImageDataset
from advrepair.defenses.adversarial_transformation import AdversarialTransformation
from advrepair.errors import InputError
from advrepair.models.base import Classifier
from advrepair.training.checkpointing import EpochCheckpoint
from advrepair.training.loops import _run_epochs, recipe_augmentation, train_classifier
from advrepair.training.recipe import ClassifierRecipe
from advrepair.validation import check_images, check_int_at_least, check_positive


def _check_transform(transform: object) -> AdversarialTransformation:
    if not isinstance(transform, AdversarialTransformation):
        raise InputError(f"transform must be an AdversarialTransformation, got {type(transform).__name__}")
    return transform


def train_on_transformation(f_a: Classifier, transform: AdversarialTransformation, data: ImageDataset,
                            recipe: ClassifierRecipe, *, seed: int = 0, device: str | torch.device = "cpu",
                            progress: bool = True, resume: EpochCheckpoint | None = None) -> list[dict[str, float]]:
    """Train ``f_a`` in place on ``g(x)`` with cross-entropy (xiao2020 Eq. 1); f_b stays fixed.

    Args:
        f_a: the classifier to train (any :class:`Classifier`).
        transform: g, built on a pre-trained f_b.
        data: the training set (labels are used, as in Eq. 1).
        recipe: a standard (non-adversarial) recipe: epochs, batch, optimizer, lr, schedule.
        seed: seeds the batch order, f_a's dropout (none in our models), the recipe's flips and
            shifts (applied before g) and g's random starts.
        resume: save state after every epoch; a rerun continues after the last saved one.

    Returns:
        Per-epoch mean losses ``[{"epoch": 1, "loss": ...}, ...]``.

    Shapes: batches of (B, C, H, W) images in [0, 1] and (B,) labels.

    Example:
        >>> g = AdversarialTransformation(f_b, delta=0.2, steps=13)
        >>> train_on_transformation(f_a, g, train_set, ClassifierRecipe(epochs=10), seed=0)
        >>> defended = nn.Sequential(g, f_a).eval()
    """
    _check_transform(transform)
    if not isinstance(f_a, nn.Module):
        raise InputError(f"f_a must be an nn.Module, got {type(f_a).__name__}")
    if f_a is transform.f_b:
        raise InputError("f_a and f_b must be different networks: f_b stays fixed while f_a trains")
    if recipe.adversarial:
        raise InputError("train_on_transformation takes a standard recipe (adversarial=False): "
                         "the adversarial transformation replaces PGD adversarial training")
    device = resolve_device(device)
    f_a.to(device)
    transform.to(device)
    f_b_grad = [p.requires_grad for p in transform.f_b.parameters()]
    for p in transform.f_b.parameters():
        p.requires_grad_(False)  # f_b is fixed; its parameters need no gradient

    augment = recipe_augmentation(recipe, seed)

    def step(x: torch.Tensor, y: torch.Tensor, epoch: int) -> torch.Tensor:
        with torch.no_grad():
            transformed = transform.transform(augment(x, epoch), draw=f"train-{seed}-{epoch}")
        f_a.train()
        return F.cross_entropy(f_a(transformed), y)

    try:
        history = _run_epochs(list(f_a.parameters()), data, epochs=recipe.epochs, batch_size=recipe.batch_size,
                              subset=recipe.train_subset, optimizer=recipe.optimizer, lr=recipe.lr,
                              weight_decay=recipe.weight_decay, schedule=recipe.schedule, seed=seed,
                              device=device, desc="xiao-train", progress=progress, step=step, resume=resume)
    finally:
        for p, flag in zip(transform.f_b.parameters(), f_b_grad):
            p.requires_grad_(flag)
    f_a.eval()
    return history


# -- training cost -----------------------------------------------------------------------
@dataclass
class TrainingCost:
    """Cost of one training run.

    Attributes:
        seconds: wall-clock time.
        passes: per named network, ``{"forward": images, "backward": images}``: a batch of
            B images through the network counts B (a backward pass counts B when the
            gradient reaches the network's output).
        result: what the training function returned (its loss history), not serialized.
    """

    seconds: float
    passes: dict[str, dict[str, int]]
    result: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("result")
        return d


class PassCounter:
    """Counts images through named networks' forward and backward passes while active.

    Forward hooks count the batch size of every call; when the output carries autograd
    history, a tensor hook counts the batch again when a gradient reaches it.

    Example:
        >>> with PassCounter({"f_a": f_a, "f_b": f_b}) as counter:
        ...     train_on_transformation(f_a, g, data, recipe)
        >>> counter.passes["f_b"]["backward"]
    """

    def __init__(self, networks: dict[str, nn.Module]) -> None:
        if not networks or not all(isinstance(m, nn.Module) for m in networks.values()):
            raise InputError("PassCounter needs a non-empty {name: nn.Module} mapping")
        self.networks = dict(networks)
        self.passes: dict[str, dict[str, int]] = {k: {"forward": 0, "backward": 0} for k in self.networks}
        self._handles: list[Any] = []

    def _hook(self, name: str) -> Callable[..., None]:
        counts = self.passes[name]

        def hook(_module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            n = int(inputs[0].shape[0]) if inputs and isinstance(inputs[0], torch.Tensor) else 0
            counts["forward"] += n
            if isinstance(output, torch.Tensor) and output.requires_grad:
                def on_grad(grad: torch.Tensor) -> None:
                    counts["backward"] += n
                output.register_hook(on_grad)
        return hook

    def __enter__(self) -> "PassCounter":
        self._handles = [m.register_forward_hook(self._hook(k)) for k, m in self.networks.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def measure_training_cost(train: Callable[[], Any], networks: dict[str, nn.Module]) -> TrainingCost:
    """Run ``train()`` and return its seconds and passes through ``networks``.

    Example:
        >>> cost = measure_training_cost(lambda: train_classifier(f_a, data, adv_recipe), {"f_a": f_a})
    """
    if not callable(train):
        raise InputError("train must be a callable taking no arguments")
    with PassCounter(networks) as counter:
        t0 = time.perf_counter()
        result = train()
        seconds = time.perf_counter() - t0
    return TrainingCost(seconds=seconds, passes=counter.passes, result=result)


def compare_training_cost(make_f_a: Callable[[], Classifier], transform: AdversarialTransformation,
                          data: ImageDataset, recipe: ClassifierRecipe, adversarial_recipe: ClassifierRecipe, *,
                          seed: int = 0, device: str | torch.device = "cpu",
                          progress: bool = False) -> dict[str, TrainingCost]:
    """Train two fresh copies of f_a in the same run: on g (Eq. 1) and by PGD adversarial training.

    ``make_f_a()`` is called once per method (seed it inside for equal initializations).
    Returns ``{"transformation": cost, "pgd-at": cost}``; the trained models are in each
    cost's ``result`` as ``(model, history)``.

    Example:
        >>> costs = compare_training_cost(lambda: SmallCNN(), g, train_set, ClassifierRecipe(epochs=1),
        ...                               ClassifierRecipe(epochs=1, adversarial=True, eps=0.1, steps=7))
        >>> costs["transformation"].seconds / costs["pgd-at"].seconds
    """
    _check_transform(transform)
    if not adversarial_recipe.adversarial:
        raise InputError("adversarial_recipe must have adversarial=True (PGD adversarial training)")
    costs: dict[str, TrainingCost] = {}
    f_a = make_f_a()
    cost = measure_training_cost(
        lambda: train_on_transformation(f_a, transform, data, recipe, seed=seed, device=device, progress=progress),
        {"f_a": f_a, "f_b": transform.f_b})
    cost.result = (f_a, cost.result)
    costs["transformation"] = cost
    f_a2 = make_f_a()
    cost = measure_training_cost(
        lambda: train_classifier(f_a2, data, adversarial_recipe, seed=seed, device=device, progress=progress),
        {"f_a": f_a2})
    cost.result = (f_a2, cost.result)
    costs["pgd-at"] = cost
    return costs


# -- reparameterization (Sec. 4.1) --------------------------------------------------------
class Reparameterization(nn.Module):
    """h: a small fully convolutional network imitating g (xiao2020 Sec. 3.3/4.1).

    ``h(x) = clip(x + delta * tanh(r(x)), 0, 1)`` with r a stack of 3x3 convolutions, so
    outputs stay within ``delta`` of the input, like g's.

    Shapes: (B, C, H, W) in [0, 1] -> (B, C, H, W) in [0, 1] (any H, W).

    Example:
        >>> h = fit_imitator(g, train_set, epochs=5)
        >>> attackable = nn.Sequential(BPDA(g, h), f_a)   # the reparameterization attack
    """

    def __init__(self, channels: int = 1, delta: float = 0.2, width: int = 32, depth: int = 4) -> None:
        super().__init__()
        channels = check_int_at_least(channels, "channels", 1)
        width = check_int_at_least(width, "width", 1)
        depth = check_int_at_least(depth, "depth", 2)
        self.delta = check_positive(delta, "delta")
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.residual = nn.Sequential(*layers)
        self.config = dict(channels=channels, delta=self.delta, width=width, depth=depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.delta * torch.tanh(self.residual(x))).clamp(0.0, 1.0)


def fit_imitator(transform: AdversarialTransformation, data: ImageDataset, *, net: nn.Module | None = None,
                 epochs: int = 5, batch_size: int = 64, lr: float = 1e-3, train_subset: int | None = None,
                 seed: int = 0, device: str | torch.device = "cpu", progress: bool = True) -> nn.Module:
    """Train ``h`` to minimize ``E_x ||h(x) - g(x)||^2`` (mean squared error per pixel) and return it.

    Args:
        transform: g; its f_b is not trained.
        data: natural images (labels unused).
        net: the network to train; default a :class:`Reparameterization` with g's Delta.
        epochs, batch_size, lr, train_subset: Adam, constant learning rate.
        seed: batch order, initialization (of the default net) and g's draws
            (stream ``imitate-{seed}-{epoch}``).

    Returns:
        The trained network in eval mode; its per-epoch losses are in ``net.history``.

    Example:
        >>> h = fit_imitator(g, train_set, epochs=5, progress=False)
        >>> ((h(x) - g(x)) ** 2).mean()     # the paper finds test error stays high
    """
    _check_transform(transform)
    epochs = check_int_at_least(epochs, "epochs", 1)
    batch_size = check_int_at_least(batch_size, "batch_size", 1)
    lr = check_positive(lr, "lr")
    device = resolve_device(device)
    if net is None:
        torch.manual_seed(seed)
        net = Reparameterization(channels=data.image_shape[0], delta=max(transform.delta, 1e-6))
    elif not isinstance(net, nn.Module):
        raise InputError(f"net must be an nn.Module, got {type(net).__name__}")
    net.to(device)
    transform.to(device)

    def step(x: torch.Tensor, _y: torch.Tensor, epoch: int) -> torch.Tensor:
        with torch.no_grad():
            target = transform.transform(x, draw=f"imitate-{seed}-{epoch}")
        net.train()
        return F.mse_loss(net(x), target)

    history = _run_epochs(list(net.parameters()), data, epochs=epochs, batch_size=batch_size, subset=train_subset,
                          optimizer="adam", lr=lr, weight_decay=0.0, schedule="constant", seed=seed,
                          device=device, desc="imitate-g", progress=progress, step=step)
    net.eval()
    setattr(net, "history", history)  # noqa: B010 - a plain attribute; the stubs type Module attributes as tensors
    return net


def imitation_error(net: nn.Module, transform: AdversarialTransformation, images: torch.Tensor,
                    draw: int | str = 0) -> float:
    """Mean squared error ``||h(x) - g(x)||^2 / pixels`` on ``images`` (B, C, H, W) against one draw of g.

    Compare it on training and held-out images: the paper reports that it stays high on
    held-out images (h overfits).
    """
    check_images(images)
    _check_transform(transform)
    with torch.no_grad():
        return float(F.mse_loss(net(images), transform.transform(images, draw=draw)))
