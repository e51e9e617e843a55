"""``load_dataset``: one entry point that dispatches a dataset name to its loader."""
from __future__ import annotations

import inspect
import os
from functools import partial
from typing import Any, Callable

from advrepair.data.cifar import load_cifar
from advrepair.data.dataset import ImageDataset
from advrepair.data.fashion_mnist import load_fashion_mnist
from advrepair.data.folder import load_folder
from advrepair.data.svhn import load_svhn
from advrepair.enums import DatasetName
from advrepair.errors import InputError

_LOADERS: dict[DatasetName, Callable[..., ImageDataset]] = {
    DatasetName.FASHION_MNIST: load_fashion_mnist,
    DatasetName.CIFAR10: partial(load_cifar, "cifar10"),
    DatasetName.CIFAR100: partial(load_cifar, "cifar100"),
    DatasetName.SVHN: load_svhn,
    DatasetName.FOLDER: load_folder,
}


def available_datasets() -> list[str]:
    """The dataset names ``load_dataset`` accepts."""
    return [name.value for name in _LOADERS]


def load_dataset(
    name: str | DatasetName,
    split: str = "test",
    root: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> ImageDataset:
    """Load ``split`` of dataset ``name`` from ``root`` into memory.

    Args:
        name: one of ``available_datasets()`` (aliases such as "cifar-10" work).
        split: "train" or "test" ("extra" too for SVHN; folders ignore it unless
            ``root/<split>`` exists).
        root: where the files are; only Fashion-MNIST has a default
            (``$ADVREPAIR_FASHION_MNIST``, then ``/usr/share/datasets/fashion-mnist``).
        **kwargs: loader options: ``distribution="bin"|"py"`` for CIFAR,
            ``channels`` and ``size=(H, W)`` for folders.

    Returns:
        ImageDataset with uint8 images (N, C, H, W) and int64 labels (N,).

    Raises:
        InputError: unknown name, split or option.
        DatasetError: files missing or malformed.
    """
    key = DatasetName.parse(name)  # raises InputError listing the known names
    loader = _LOADERS[key]
    params = inspect.signature(loader).parameters
    unknown = sorted(k for k in kwargs if k not in params or k in ("split", "root"))
    if unknown:
        options = [p for p in params if p not in ("split", "root")]
        raise InputError(
            f"dataset {key.value!r} does not take option(s) {unknown}; it accepts {options or 'none'}"
        )
    return loader(split=split, root=root, **kwargs)
