"""The contrastive task of mao2021 (Eq. 4): a SimCLR head G on the frozen classifier.

``G`` is the paper's two fully connected layers on the penultimate features. Offline it is
trained with NT-Xent (Chen et al. 2020) at tau = 0.2 on two views per clean image. At test
time the loss of an image x is Eq. 4 with positives = pairs of x's ``n_views`` augmented
views and negatives = a fixed bank of augmented clean training images:

    L_s(x) = mean_{i != j} [ -cos(z_i, z_j)/tau + log sum_{k != i} exp(cos(z_i, z_k)/tau) ]

with k over the other views of x and the whole bank.

Deviation from the reference code (documented in the notes): its negatives are the other
test images of the batch, which makes an image's repair depend on its batch-mates. Ours
come from a fixed, seeded bank of clean training images whose embeddings are computed
once per forward pass, without gradient.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from advrepair.errors import InputError
from advrepair.models.base import Classifier
from advrepair.models.registry import register_architecture
from advrepair.ssl.augment import N_AUG_NUMBERS, AugmentConfig, _augment, _augment_views
from advrepair.ssl.task import SelfSupervisedTask
from advrepair.validation import check_images, check_int_at_least, check_positive


def _check_embeddings(z: object, dims: int, what: str) -> torch.Tensor:
    if not isinstance(z, torch.Tensor) or not z.is_floating_point() or z.dim() != dims:
        got = f"{z.dtype} {tuple(z.shape)}" if isinstance(z, torch.Tensor) else type(z).__name__
        raise InputError(f"{what} must be a float tensor with {dims} dimensions, got {got}")
    return z


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCLR's NT-Xent over a batch: (N, d), (N, d) -> scalar; 2N - 2 negatives per anchor."""
    _check_embeddings(z1, 2, "z1")
    _check_embeddings(z2, 2, "z2")
    if z1.shape != z2.shape or z1.shape[0] < 1:
        raise InputError(f"z1 and z2 must be (N, d) embeddings of the same shape, got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    check_positive(tau, "tau")
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.t() / tau
    sim.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


def multiview_contrastive_loss(z_views: torch.Tensor, z_negatives: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 4 per image.

    Args:
        z_views: (B, n, d) embeddings of n >= 2 views of each image.
        z_negatives: (M, d) embeddings of the negative bank.
    Returns:
        (B,) the mean over anchor/positive pairs of the InfoNCE loss.
    """
    _check_embeddings(z_views, 3, "z_views")
    _check_embeddings(z_negatives, 2, "z_negatives")
    if z_views.shape[1] < 2 or z_negatives.shape[1] != z_views.shape[2]:
        raise InputError(f"need z_views (B, n >= 2, d) and z_negatives (M, d) with the same d, got "
                         f"{tuple(z_views.shape)} and {tuple(z_negatives.shape)}")
    check_positive(tau, "tau")
    b, n, _ = z_views.shape
    zv = F.normalize(z_views, dim=-1)
    zn = F.normalize(z_negatives, dim=-1)
    s_vv = zv @ zv.transpose(1, 2) / tau                      # (B, n, n)
    s_vn = torch.einsum("bnd,md->bnm", zv, zn) / tau          # (B, n, M)
    eye = torch.eye(n, dtype=torch.bool, device=zv.device)
    denom = torch.logsumexp(torch.cat([s_vv.masked_fill(eye, float("-inf")), s_vn], dim=2), dim=2)
    positives = s_vv.masked_fill(eye, 0.0).sum(2) / (n - 1)   # mean over j != i
    return (denom - positives).mean(1)


class ContrastiveHead(nn.Module):
    """G: Linear -> ReLU -> Linear, features (B, in_dim) -> embeddings (B, out_dim)."""

    arch = "contrastive-head"

    def __init__(self, in_dim: int, hidden_dim: int = 256, out_dim: int = 128) -> None:
        super().__init__()
        in_dim = check_int_at_least(in_dim, "in_dim", 1)
        hidden_dim = check_int_at_least(hidden_dim, "hidden_dim", 1)
        out_dim = check_int_at_least(out_dim, "out_dim", 1)
        self.config = dict(in_dim=in_dim, hidden_dim=hidden_dim, out_dim=out_dim)
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


register_architecture(ContrastiveHead.arch, ContrastiveHead)


class ContrastiveTask(SelfSupervisedTask):
    """Contrastive self-supervision on a frozen classifier's penultimate features.

    Args:
        head: the trained ``ContrastiveHead``.
        tau: NT-Xent temperature (paper: 0.2).
        n_views: augmented views of each image at test time (>= 2).
        augment_cfg: the augmentations (the same ones the head was trained with).
        negatives: (M, C, H, W) clean images forming the fixed negative bank.
        negatives_seed: seeds the bank's augmentations.
    """

    name = "contrastive"
    negatives: torch.Tensor

    def __init__(self, head: ContrastiveHead, tau: float = 0.2, n_views: int = 4,
                 augment_cfg: AugmentConfig = AugmentConfig(), negatives: torch.Tensor | None = None,
                 negatives_seed: int = 0) -> None:
        super().__init__()
        if not isinstance(head, ContrastiveHead):
            raise InputError(f"ContrastiveTask needs a ContrastiveHead, got {type(head).__name__}")
        check_int_at_least(n_views, "n_views (positives are pairs of views)", 2)
        check_positive(tau, "tau")
        if not isinstance(augment_cfg, AugmentConfig):
            raise InputError(f"augment_cfg must be an AugmentConfig, got {type(augment_cfg).__name__}")
        if negatives is not None:
            check_images(negatives, "negatives")
        self.head, self.tau, self.n_views, self.augment_cfg = head, tau, n_views, augment_cfg
        self.negatives_seed = negatives_seed
        self.register_buffer("negatives", negatives if negatives is not None else torch.empty(0), persistent=False)

    @property
    def numbers_per_image(self) -> tuple[int, ...]:
        return (self.n_views, N_AUG_NUMBERS)

    @property
    def training_numbers_per_image(self) -> tuple[int, ...]:
        return (2, N_AUG_NUMBERS)

    @staticmethod
    def _check(images: torch.Tensor, u: torch.Tensor, per_image: tuple[int, ...]) -> None:
        check_images(images)
        if images.shape[1] not in (1, 3):
            raise InputError(f"the contrastive task's augmentations take 1- or 3-channel images, got shape "
                             f"{tuple(images.shape)}")
        if not isinstance(u, torch.Tensor) or tuple(u.shape) != (images.shape[0], *per_image):
            got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
            raise InputError(f"the contrastive task needs u of shape {(images.shape[0], *per_image)}, got {got}")

    def embed(self, backbone: Classifier, images: torch.Tensor) -> torch.Tensor:
        return self.head(backbone.features(images))

    def context(self, backbone: Classifier) -> torch.Tensor:
        if self.negatives.numel() == 0:
            raise InputError("ContrastiveTask needs a negative bank: pass negatives=(M, C, H, W) clean images")
        gen = torch.Generator().manual_seed(self.negatives_seed)
        u = torch.rand(self.negatives.shape[0], N_AUG_NUMBERS, generator=gen).to(self.negatives.device)
        with torch.no_grad():
            return self.embed(backbone, _augment(self.negatives, u, self.augment_cfg))

    def per_image_loss(self, backbone: Classifier, images: torch.Tensor, u: torch.Tensor,
                       context: Any) -> torch.Tensor:
        self._check(images, u, self.numbers_per_image)
        b = images.shape[0]
        views = _augment_views(images, u, self.augment_cfg)
        z = self.embed(backbone, views).view(b, self.n_views, -1)
        return multiview_contrastive_loss(z, context, self.tau)

    def training_loss(self, backbone: Classifier, images: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        self._check(images, u, self.training_numbers_per_image)
        with torch.no_grad():  # the classifier is frozen: only G learns
            f = backbone.features(_augment_views(images, u, self.augment_cfg))
        f = f.view(images.shape[0], 2, -1)
        return nt_xent(self.head(f[:, 0]), self.head(f[:, 1]), self.tau)

    def config(self) -> dict[str, Any]:
        return {"tau": self.tau, "n_views": self.n_views, "augment": self.augment_cfg.to_dict()}
