"""Rotation prediction (Gidaris et al. 2018) as a self-supervised task for the reverse attack.

lawhon ("multi-task SSL reversal", Sec. 3.2.3) repairs an image by also minimizing

    L_r(x) = -(1/K) sum_{k=1..K} log F^k(x^k)                                   (L_r)

where ``x^k`` is ``x`` rotated by the k-th angle, ``F^k`` the probability a rotation
network gives to rotation ``k``, and K = 4 (0, 90, 180, 270 degrees), as in Gidaris et al.
Training minimizes the same cross-entropy over all four rotations of every clean image,
which is Gidaris et al.'s recipe (the four rotated copies of an image share a batch).

Where the network sits: lawhon trains "a deep convolutional neural network F ... designed
to predict image rotations" and stresses that the three tasks run on *different
architectures* so that they are hard to attack together. We follow that by default: the
``RotationHead`` with ``source="image"`` is a small standalone CNN on the image itself.
``source="features"`` is the mao2021-style alternative (a small MLP on the frozen
classifier's penultimate features), kept for ablations; then the classifier is frozen and
only the MLP learns.

Deviations from the paper(s):
- The network is a 3-conv CNN sized for 28x28 / 32x32 images, not Gidaris et al.'s NIN /
  AlexNet (lawhon used a pretrained CIFAR model); it ends with a 2x2 adaptive average pool
  so any square size works.
- Images must be square: ``torch.rot90`` of a non-square image changes its shape.
- The loss is deterministic (all 4 rotations every time): the task draws no random
  numbers, ``numbers_per_image == (0,)``.

Example:
    >>> head = RotationHead(source="image", in_channels=1)
    >>> task = RotationTask(head)
    >>> loss = task.per_image_loss(classifier, images, torch.empty(len(images), 0), None)  # (B,)
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from advrepair.errors import InputError
from advrepair.models.base import Classifier
from advrepair.models.registry import register_architecture
from advrepair.ssl.task import SelfSupervisedTask
from advrepair.validation import check_images, check_int_at_least

#: number of rotation classes (0, 90, 180, 270 degrees)
N_ROTATIONS = 4
ROTATION_SOURCES = ("image", "features")


def rotate_all(images: torch.Tensor) -> torch.Tensor:
    """The four rotations of every image, image-major.

    Args:
        images: (B, C, S, S), square.
    Returns:
        (B * 4, C, S, S): rows ``4*i + k`` hold image ``i`` rotated by ``k * 90`` degrees
        counter-clockwise (``torch.rot90`` on the (H, W) plane); differentiable.

    Raises:
        InputError: anything but a (B, C, S, S) tensor (rotating a non-square image changes its shape).
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[2] != images.shape[3]:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"rotate_all needs square NCHW images (B, C, S, S), got {got}")
    b = images.shape[0]
    rots = torch.stack([torch.rot90(images, k, dims=(2, 3)) for k in range(N_ROTATIONS)], dim=1)
    return rots.reshape(b * N_ROTATIONS, *images.shape[1:])


def rotation_labels(batch: int, device: torch.device | None = None) -> torch.Tensor:
    """(B * 4,) labels ``0, 1, 2, 3, 0, 1, ...`` matching :func:`rotate_all`'s layout."""
    return torch.arange(N_ROTATIONS, device=device).repeat(batch)


class RotationHead(nn.Module):
    """Predicts which of 4 rotations an input underwent: -> (N, 4) logits.

    Args:
        source: ``"image"`` (the paper's choice): a standalone CNN on (N, C, S, S) images
            in [0, 1], conv(w)-pool-conv(2w)-pool-conv(4w)-avgpool(2x2)-linear(4);
            ``"features"``: Linear(in_dim, hidden_dim)-ReLU-Linear(4) on (N, in_dim)
            classifier features.
        in_channels: image channels (``source="image"``).
        width: w, channels of the first conv (``source="image"``).
        in_dim: feature dimension (``source="features"``, required there).
        hidden_dim: hidden units of the MLP (``source="features"``).

    ``arch`` and ``config`` let ``save_checkpoint`` / ``build_model`` rebuild it.

    Example:
        >>> RotationHead("image", in_channels=3)(torch.rand(8, 3, 32, 32)).shape
        torch.Size([8, 4])
    """

    arch = "rotation-head"

    def __init__(self, source: str = "image", in_channels: int = 1, width: int = 16,
                 in_dim: int | None = None, hidden_dim: int = 128) -> None:
        super().__init__()
        if source not in ROTATION_SOURCES:
            raise InputError(f"RotationHead source must be one of {list(ROTATION_SOURCES)}, got {source!r}")
        self.source = source
        if source == "image":
            in_channels = check_int_at_least(in_channels, "in_channels", 1)
            width = check_int_at_least(width, "width", 1)
            self.config: dict[str, Any] = dict(source=source, in_channels=in_channels, width=width)
            self.net = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(),
                nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16 * width, N_ROTATIONS),
            )
        else:
            if in_dim is None:
                raise InputError("RotationHead(source='features') needs in_dim (the classifier's feature_dim)")
            in_dim = check_int_at_least(in_dim, "in_dim", 1)
            hidden_dim = check_int_at_least(hidden_dim, "hidden_dim", 1)
            self.config = dict(source=source, in_dim=in_dim, hidden_dim=hidden_dim)
            self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, N_ROTATIONS))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.source == "image":
            ok = isinstance(inputs, torch.Tensor) and inputs.dim() == 4 and inputs.shape[1] == self.config["in_channels"]
            want = f"(N, {self.config['in_channels']}, S, S) images"
        else:
            ok = isinstance(inputs, torch.Tensor) and inputs.dim() == 2 and inputs.shape[1] == self.config["in_dim"]
            want = f"(N, {self.config['in_dim']}) features"
        if not ok:
            got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise InputError(f"this RotationHead (source={self.source!r}) takes {want}, got {got}")
        return self.net(inputs)


register_architecture(RotationHead.arch, RotationHead)


class RotationTask(SelfSupervisedTask):
    """Rotation prediction, lawhon's L_r (Gidaris et al., K = 4).

    Args:
        head: the ``RotationHead`` (trained by ``train_ssl_task``).

    Shapes: ``per_image_loss``: (B, C, S, S), u (B, 0) -> (B,); ``training_loss``:
    (B, C, S, S), u (B, 0) -> scalar. Both are differentiable in the images.

    Example:
        >>> task = RotationTask(RotationHead("image", in_channels=1))
        >>> train_ssl_task(task, classifier, data, SSLRecipe(epochs=3))
        >>> defense = ReverseAttack(classifier, [(contrastive, 1.0), (task, 1.0)], eps_v=0.2)
    """

    name = "rotation"

    def __init__(self, head: RotationHead) -> None:
        super().__init__()
        if not isinstance(head, RotationHead):
            raise InputError(f"RotationTask needs a RotationHead, got {type(head).__name__}")
        self.head = head

    @property
    def numbers_per_image(self) -> tuple[int, ...]:
        return (0,)

    @property
    def training_numbers_per_image(self) -> tuple[int, ...]:
        return (0,)

    def rotation_logits(self, backbone: Classifier, images: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B * 4, 4) logits of the 4 rotated copies, image-major."""
        if images.dim() != 4 or images.shape[2] != images.shape[3]:
            raise InputError(f"rotation prediction needs square NCHW images, got shape {tuple(images.shape)}")
        rotated = rotate_all(images)
        if self.head.source == "features":
            return self.head(backbone.features(rotated))
        return self.head(rotated)

    def per_image_loss(self, backbone: Classifier, images: torch.Tensor, u: torch.Tensor,
                       context: Any) -> torch.Tensor:
        check_images(images)
        b = images.shape[0]
        logits = self.rotation_logits(backbone, images)
        ce = F.cross_entropy(logits, rotation_labels(b, images.device), reduction="none")
        return ce.view(b, N_ROTATIONS).mean(1)

    def training_loss(self, backbone: Classifier, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        check_images(images)
        b = images.shape[0]
        labels = rotation_labels(b, images.device)
        if self.head.source == "features":
            with torch.no_grad():  # the classifier is frozen: only the head learns
                f = backbone.features(rotate_all(images))
            return F.cross_entropy(self.head(f), labels)
        return F.cross_entropy(self.rotation_logits(backbone, images), labels)

    def config(self) -> dict[str, Any]:
        return {"source": self.head.source}


@torch.no_grad()
def rotation_accuracy(backbone: Classifier, task: RotationTask, images: torch.Tensor,
                      batch_size: int = 256) -> float:
    """Fraction of the 4 * B rotated copies whose rotation ``task`` predicts correctly.

    Args:
        backbone: the classifier (read only when the head uses its features); it and the
            task run in eval mode here and get their modes back afterwards.
        task: a trained ``RotationTask``.
        images: (B, C, S, S) in [0, 1].
    Returns:
        accuracy in [0, 1] (chance is 0.25).

    Example:
        >>> rotation_accuracy(classifier, task, test_images)
        0.93
    """
    check_images(images)
    if not isinstance(task, RotationTask):
        raise InputError(f"rotation_accuracy needs a RotationTask, got {type(task).__name__}")
    batch_size = check_int_at_least(batch_size, "batch_size", 1)
    modes = [(m, m.training) for m in (task, backbone)]
    task.eval()
    backbone.eval()
    try:
        correct = 0
        for chunk in images.split(batch_size):
            pred = task.rotation_logits(backbone, chunk).argmax(1)
            correct += int((pred == rotation_labels(chunk.shape[0], chunk.device)).sum())
    finally:
        for module, mode in modes:
            module.train(mode)
    return correct / (N_ROTATIONS * images.shape[0])
