"""Deterministic subsets for evaluation: the first n images, n per class, or n balanced over classes."""
from __future__ import annotations

import torch

from advrepair.data.dataset import ImageDataset
from advrepair.errors import InputError
from advrepair.validation import check_int_at_least


def _check_count(value: int, name: str) -> int:
    return check_int_at_least(value, name, 0)


def first_n(ds: ImageDataset, n: int) -> ImageDataset:
    """The first ``n`` images in dataset order (the RobustBench convention for test subsets)."""
    _check_count(n, "n")
    if n > len(ds):
        raise InputError(f"asked for the first {n} images but {ds.name} ({ds.split}) has only {len(ds)}")
    return ds.subset(range(n))


def _sample_per_class(ds: ImageDataset, counts: list[int], seed: int) -> torch.Tensor:
    """Sorted indices with ``counts[c]`` images of class ``c``, drawn without replacement.

    One generator walks the classes in order, so the draw depends only on the seed,
    the labels and the counts.
    """
    generator = torch.Generator().manual_seed(int(seed))
    chosen: list[torch.Tensor] = []
    for cls, count in enumerate(counts):
        members = torch.nonzero(ds.labels == cls, as_tuple=False).reshape(-1)
        if members.numel() < count:
            raise InputError(
                f"class {cls} ({ds.classes[cls]!r}) of {ds.name} ({ds.split}) has {members.numel()} images, "
                f"fewer than the {count} requested"
            )
        perm = torch.randperm(members.numel(), generator=generator)
        chosen.append(members[perm[:count]])
    if not chosen:
        return torch.empty(0, dtype=torch.int64)
    return torch.sort(torch.cat(chosen)).values


def per_class(ds: ImageDataset, n_per_class: int, seed: int = 0) -> ImageDataset:
    """Exactly ``n_per_class`` images of every class, chosen at random given ``seed``, in dataset order.

    Raises:
        InputError: a class has fewer than ``n_per_class`` images.
    """
    _check_count(n_per_class, "n_per_class")
    return ds.subset(_sample_per_class(ds, [n_per_class] * ds.num_classes, seed))


def balanced_subset(ds: ImageDataset, n: int, seed: int = 0) -> ImageDataset:
    """``n`` images spread as evenly as possible over the classes, in dataset order.

    Every class gets ``n // C``; the ``n % C`` left over go one each to the lowest class ids.

    Raises:
        InputError: ``n`` exceeds the dataset, or a class has too few images for its share.
    """
    _check_count(n, "n")
    if n > len(ds):
        raise InputError(f"asked for {n} images but {ds.name} ({ds.split}) has only {len(ds)}")
    base, extra = divmod(n, ds.num_classes)
    counts = [base + (1 if c < extra else 0) for c in range(ds.num_classes)]
    return ds.subset(_sample_per_class(ds, counts, seed))


def subset_label(n: int, seed: int) -> str:
    """How results name ``balanced_subset(data, n, seed=seed)`` (part of their keys: keep it stable)."""
    return f"balanced {n} (seed {seed})"
