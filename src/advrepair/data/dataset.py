"""The in-memory image dataset every loader returns: uint8 NCHW images plus int64 labels."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from advrepair.errors import InputError
from advrepair.validation import check_int_at_least

Indices = Sequence[int] | torch.Tensor | slice | range

KNOWN_SPLITS: tuple[str, ...] = ("train", "test")
_SPLIT_ALIASES: dict[str, str] = {"training": "train", "testing": "test", "t10k": "test"}


def normalize_split(split: str, allowed: Sequence[str] = KNOWN_SPLITS, dataset: str = "dataset") -> str:
    """Return the canonical split name (``"train"``, ``"test"``, ...) or raise InputError.

    ``allowed`` lists the splits the dataset actually has, so the error can name them.
    """
    if not isinstance(split, str):
        raise InputError(f"split must be a string, got {type(split).__name__}")
    key = split.strip().lower()
    key = _SPLIT_ALIASES.get(key, key)
    if key not in allowed:
        raise InputError(f"unknown split {split!r} for {dataset}; expected one of {list(allowed)}")
    return key


@dataclass(eq=False, repr=False)
class ImageDataset:
    """A labelled image set held in memory.

    Attributes:
        name: dataset name, e.g. ``"fashion-mnist"``.
        images: uint8 tensor of shape (N, C, H, W), kept uint8 so that a 60k-image
            training set costs 1 byte per value instead of 4; or float32 in [0, 1] for
            images a user hands over as floats (the audit), kept exactly as given.
        labels: int64 tensor of shape (N,) with values in ``[0, len(classes))``.
        classes: class names; ``classes[k]`` names label ``k``.
        split: which split the images came from (``"train"``, ``"test"``, ...).
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    split: str = "test"

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dtype not in (torch.uint8, torch.float32):
            got = self.images.dtype if isinstance(self.images, torch.Tensor) else type(self.images).__name__
            raise InputError(f"ImageDataset.images must be a uint8 or float32 tensor, got {got}")
        if self.images.dtype == torch.float32 and self.images.numel() and not (
                torch.isfinite(self.images).all() and self.images.min() >= 0 and self.images.max() <= 1):
            raise InputError("float ImageDataset.images must be finite and lie in [0, 1]")
        if self.images.dim() != 4:
            raise InputError(
                f"ImageDataset.images must be NCHW (4 dimensions), got shape {tuple(self.images.shape)}"
            )
        if not isinstance(self.labels, torch.Tensor):
            raise InputError(f"ImageDataset.labels must be a tensor, got {type(self.labels).__name__}")
        if self.labels.is_floating_point() or self.labels.is_complex() or self.labels.dtype == torch.bool:
            raise InputError(f"ImageDataset.labels must be integer class indices, got {self.labels.dtype}")
        self.labels = self.labels.to(torch.int64)
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise InputError(
                f"ImageDataset.labels must have shape ({self.images.shape[0]},), "
                f"got {tuple(self.labels.shape)}"
            )
        self.classes = [str(c) for c in self.classes]
        if not self.classes:
            raise InputError("ImageDataset.classes must name at least one class")
        if self.labels.numel():
            lo, hi = int(self.labels.min()), int(self.labels.max())
            if lo < 0 or hi >= len(self.classes):
                raise InputError(
                    f"ImageDataset.labels must lie in [0, {len(self.classes) - 1}], found [{lo}, {hi}]"
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"image_shape={self.image_shape}, num_classes={self.num_classes})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        _, c, h, w = self.images.shape
        return (int(c), int(h), int(w))

    def _index(self, indices: Indices) -> torch.Tensor:
        """Turn ``indices`` into a validated int64 index vector."""
        n = len(self)
        if isinstance(indices, slice):
            return torch.arange(n, dtype=torch.int64)[indices]
        if isinstance(indices, torch.Tensor):
            if indices.is_floating_point() or indices.dtype == torch.bool:
                raise InputError(f"indices must be integers, got dtype {indices.dtype}")
            idx = indices.to(torch.int64).reshape(-1)
        else:
            try:
                idx = torch.as_tensor(list(indices), dtype=torch.int64)
            except (TypeError, ValueError) as exc:
                raise InputError(f"indices must be a sequence of integers: {exc}") from exc
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise InputError(
                f"indices must lie in [0, {n - 1}] for a dataset of {n} images, "
                f"found [{int(idx.min())}, {int(idx.max())}]"
            )
        return idx

    def tensors(self, indices: Indices | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(images, labels)``: float32 (N, C, H, W) in [0, 1] and int64 (N,).

        With ``indices``, only those rows (in the given order).
        """
        if indices is None:
            images, labels = self.images, self.labels
        else:
            idx = self._index(indices)
            images, labels = self.images[idx], self.labels[idx]
        return _as_float(images), labels.clone()

    def subset(self, indices: Indices) -> "ImageDataset":
        """A new dataset with the rows ``indices`` (copied; same name, classes and split)."""
        idx = self._index(indices)
        return ImageDataset(
            name=self.name,
            images=self.images[idx].contiguous(),
            labels=self.labels[idx].clone(),
            classes=list(self.classes),
            split=self.split,
        )

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images, labels)`` batches in dataset order; images float32 (B, C, H, W) in [0, 1].

        Converting one batch at a time keeps the float copy small.
        """
        batch_size = check_int_at_least(batch_size, "batch_size", 1)
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            yield _as_float(self.images[start:stop]), self.labels[start:stop].clone()


def _as_float(images: torch.Tensor) -> torch.Tensor:
    """A float32 copy in [0, 1] of uint8 (scaled) or float32 (as they are) images."""
    return images.to(torch.float32).div_(255.0) if images.dtype == torch.uint8 else images.clone()
