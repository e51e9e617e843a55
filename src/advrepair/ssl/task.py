"""The self-supervised task interface the reverse attack minimizes.

A task owns a small head on the classifier's features (the classifier stays frozen) and
two losses: a training loss on clean images, and a per-image test-time loss that is
differentiable in the image. Randomness comes in as explicit uniform numbers so the
caller can seed it per image.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import nn

from advrepair.models.base import Classifier


class SelfSupervisedTask(nn.Module):
    """Base of self-supervised tasks (contrastive, rotation, inpainting; see ``ssl.registry``)."""

    name = "task"

    @property
    @abstractmethod
    def numbers_per_image(self) -> tuple[int, ...]:
        """Shape of the uniform numbers one test-time loss evaluation needs per image."""

    def context(self, backbone: Classifier) -> Any:
        """Image-independent state the test-time loss needs (e.g. negatives' embeddings)."""
        return None

    @abstractmethod
    def per_image_loss(self, backbone: Classifier, images: torch.Tensor, u: torch.Tensor,
                       context: Any) -> torch.Tensor:
        """(B, C, H, W), (B, *numbers_per_image) -> (B,) loss, differentiable in ``images``."""

    @abstractmethod
    def training_loss(self, backbone: Classifier, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Scalar loss on a clean batch; ``u`` has shape (B, *training_numbers_per_image)."""

    @property
    @abstractmethod
    def training_numbers_per_image(self) -> tuple[int, ...]:
        """Shape of the uniform numbers one training-loss evaluation needs per image."""

    def config(self) -> dict[str, Any]:
        return {}
