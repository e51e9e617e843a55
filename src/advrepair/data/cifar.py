"""CIFAR-10 and CIFAR-100 from either official distribution (binary or python pickles).

Binary records are ``label byte(s) + 3072 pixel bytes``; pixels are stored as
1024 red, 1024 green, 1024 blue values, row-major, so a record reshapes to (3, 32, 32).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advrepair.data.dataset import ImageDataset, normalize_split
from advrepair.data.safe_pickle import load_restricted_pickle
from advrepair.errors import DatasetError, InputError

_PIXELS = 3 * 32 * 32

CIFAR10_CLASSES: list[str] = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]

CIFAR100_CLASSES: list[str] = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
]


@dataclass(frozen=True)
class _Layout:
    """Where one distribution of one CIFAR variant keeps its files."""

    folder: str                       # name of the extracted folder
    files: dict[str, tuple[str, ...]]  # split -> batch files
    meta: str                         # class-name file
    label_bytes: int                  # binary only: 1 (CIFAR-10) or 2 (CIFAR-100: coarse, fine)


_LAYOUTS: dict[tuple[str, str], _Layout] = {
    ("cifar10", "bin"): _Layout(
        "cifar-10-batches-bin",
        {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)},
        "batches.meta.txt", 1,
    ),
    ("cifar10", "py"): _Layout(
        "cifar-10-batches-py",
        {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        "batches.meta", 1,
    ),
    ("cifar100", "bin"): _Layout("cifar-100-binary", {"train": ("train.bin",), "test": ("test.bin",)},
                                 "fine_label_names.txt", 2),
    ("cifar100", "py"): _Layout("cifar-100-python", {"train": ("train",), "test": ("test",)}, "meta", 2),
}

_DISPLAY = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
_ARCHIVES = {
    ("cifar10", "bin"): "cifar-10-binary.tar.gz", ("cifar10", "py"): "cifar-10-python.tar.gz",
    ("cifar100", "bin"): "cifar-100-binary.tar.gz", ("cifar100", "py"): "cifar-100-python.tar.gz",
}


def _expected_text(variant: str, split: str) -> str:
    parts = []
    for dist in ("bin", "py"):
        layout = _LAYOUTS[(variant, dist)]
        parts.append(f"{layout.folder}/ with {', '.join(layout.files[split])} (+ {layout.meta})")
    return " or ".join(parts)


def _help_text(variant: str) -> str:
    archives = " or ".join(_ARCHIVES[(variant, d)] for d in ("bin", "py"))
    return (
        f"Download {archives} from https://www.cs.toronto.edu/~kriz/cifar.html, extract it, "
        "and pass the extracted folder (or the folder that contains it) with --data-root."
    )


def _locate(variant: str, split: str, root: Path, distribution: str | None) -> tuple[str, Path]:
    """Find (distribution, folder) for ``root`` being the extracted folder or its parent.

    The binary distribution wins when both are present: it needs no unpickling.
    """
    dists = ("bin", "py") if distribution is None else (distribution,)
    for dist in dists:
        layout = _LAYOUTS[(variant, dist)]
        for folder in (root, root / layout.folder):
            # the folder is recognised by its batch files or meta file, so a partial
            # extraction still lands here and gets a "missing file" message
            markers = (*layout.files["train"], *layout.files["test"], layout.meta)
            if folder.is_dir() and any((folder / m).is_file() for m in markers):
                return dist, folder
    raise DatasetError(
        f"{_DISPLAY[variant]} ({split} split) not found under {root}: expected {_expected_text(variant, split)}, "
        f"either directly in that folder or in a subfolder of that name. {_help_text(variant)}"
    )


def _read_binary(path: Path, label_bytes: int, variant: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 3, 32, 32) and labels (N,) from one binary batch; the fine label for CIFAR-100."""
    raw = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + _PIXELS
    if raw.size == 0 or raw.size % record:
        raise DatasetError(
            f"{path} is {raw.size} bytes, not a whole number of {record}-byte {_DISPLAY[variant]} records "
            f"({label_bytes} label byte(s) + {_PIXELS} pixel bytes); download the file again"
        )
    rows = raw.reshape(-1, record)
    labels = rows[:, label_bytes - 1].astype(np.int64)  # last label byte: the fine label for CIFAR-100
    images = rows[:, label_bytes:].reshape(-1, 3, 32, 32).copy()
    return images, labels


def _get(mapping: Any, key: str, path: Path) -> Any:
    """``mapping[key]`` whether the pickle's keys came out as bytes (Python 2) or str."""
    if not isinstance(mapping, dict):
        raise DatasetError(f"{path} does not hold a dict, so it is not a CIFAR batch")
    for k in (key.encode("ascii"), key):
        if k in mapping:
            return mapping[k]
    raise DatasetError(f"{path} has no {key!r} entry, so it is not a CIFAR batch of this kind")


def _read_python(path: Path, variant: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 3, 32, 32) and labels (N,) from one pickled batch."""
    batch = load_restricted_pickle(path)
    data = np.asarray(_get(batch, "data", path))
    labels = np.asarray(_get(batch, "labels" if variant == "cifar10" else "fine_labels", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        raise DatasetError(
            f"{path}: 'data' is {data.dtype} of shape {data.shape}, expected uint8 of shape (N, {_PIXELS})"
        )
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(
            f"{path}: {labels.shape} labels ({labels.dtype}) do not match {data.shape[0]} images"
        )
    return data.reshape(-1, 3, 32, 32).copy(), labels.astype(np.int64)


def _decode_name(name: Any) -> str:
    return name.decode("utf-8") if isinstance(name, bytes) else str(name)


def _read_classes(folder: Path, layout: _Layout, dist: str, variant: str) -> list[str]:
    """Class names from the meta file; the published names when it is absent."""
    defaults = CIFAR10_CLASSES if variant == "cifar10" else CIFAR100_CLASSES
    path = folder / layout.meta
    if not path.is_file():
        return list(defaults)
    if dist == "bin":
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"cannot read class names from {path}: {exc}") from exc
        names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        meta = load_restricted_pickle(path)
        key = "label_names" if variant == "cifar10" else "fine_label_names"
        names = [_decode_name(n) for n in _get(meta, key, path)]
    if len(names) != len(defaults):
        raise DatasetError(f"{path} names {len(names)} classes, expected {len(defaults)} for {_DISPLAY[variant]}")
    return names


def load_cifar(
    variant: str,
    split: str = "test",
    root: str | os.PathLike[str] | None = None,
    distribution: str | None = None,
) -> ImageDataset:
    """Load one split of CIFAR-10 (``variant="cifar10"``) or CIFAR-100 (``"cifar100"``, fine labels).

    Args:
        root: the extracted folder (e.g. ``cifar-10-batches-bin``) or its parent.
        distribution: ``"bin"`` or ``"py"`` to force one; by default binary is preferred.

    Returns:
        ImageDataset with images uint8 (N, 3, 32, 32) and labels int64 (N,).
    """
    if variant not in _DISPLAY:
        raise InputError(f"unknown CIFAR variant {variant!r}; expected 'cifar10' or 'cifar100'")
    if distribution is not None and distribution not in ("bin", "py"):
        raise InputError(f"distribution must be 'bin', 'py' or None, got {distribution!r}")
    split = normalize_split(split, ("train", "test"), variant)
    if root is None:
        raise DatasetError(
            f"{_DISPLAY[variant]} has no default location: give its path with --data-root "
            f"(expected {_expected_text(variant, split)}). {_help_text(variant)}"
        )
    dist, folder = _locate(variant, split, Path(root).expanduser(), distribution)
    layout = _LAYOUTS[(variant, dist)]
    missing = [f for f in layout.files[split] if not (folder / f).is_file()]
    if missing:
        raise DatasetError(
            f"{_DISPLAY[variant]} ({split} split) in {folder} is incomplete: missing {', '.join(missing)} "
            f"(expected {', '.join(layout.files[split])}). {_help_text(variant)}"
        )
    parts = [
        _read_binary(folder / f, layout.label_bytes, variant) if dist == "bin" else _read_python(folder / f, variant)
        for f in layout.files[split]
    ]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    classes = _read_classes(folder, layout, dist, variant)
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DatasetError(
            f"{_DISPLAY[variant]} labels in {folder} span [{labels.min()}, {labels.max()}], "
            f"expected [0, {len(classes) - 1}]; the files are damaged or of another CIFAR variant"
        )
    return ImageDataset(
        name=variant,
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels),
        classes=classes,
        split=split,
    )
