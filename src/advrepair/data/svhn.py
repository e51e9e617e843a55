"""SVHN (cropped digits) from the official MATLAB files ``{train,test,extra}_32x32.mat``."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from advrepair.data.dataset import ImageDataset, normalize_split
from advrepair.errors import DatasetError

SVHN_SPLITS: tuple[str, ...] = ("train", "test", "extra")
SVHN_CLASSES: list[str] = [str(d) for d in range(10)]
_HELP = (
    "Download it from http://ufldl.stanford.edu/housenumbers/ (format 2, cropped digits) "
    "and give the folder that holds the .mat files with --data-root."
)


def svhn_file_name(split: str) -> str:
    return f"{split}_32x32.mat"


def load_svhn(split: str = "test", root: str | os.PathLike[str] | None = None) -> ImageDataset:
    """Load one split of SVHN.

    The .mat file holds ``X`` uint8 (32, 32, 3, N) and ``y`` (N, 1) with 1..10,
    where 10 stands for the digit 0; it is mapped to label 0 so that label == digit.

    Returns:
        ImageDataset with images uint8 (N, 3, 32, 32) and labels int64 (N,) in [0, 9].
    """
    split = normalize_split(split, SVHN_SPLITS, "svhn")
    file_name = svhn_file_name(split)
    if root is None:
        raise DatasetError(f"SVHN has no default location: give its path with --data-root (expected {file_name}). {_HELP}")
    root = Path(root).expanduser()
    path = root if root.is_file() else root / file_name
    if not path.is_file():
        raise DatasetError(f"SVHN ({split} split) not found: expected {file_name} in {root}. {_HELP}")
    try:
        import scipy.io
        from scipy.io.matlab import MatReadError
    except ImportError as exc:  # scipy is a dependency, but only SVHN needs it
        raise DatasetError("reading SVHN needs scipy: pip install scipy") from exc
    try:
        mat = scipy.io.loadmat(str(path), variable_names=("X", "y"))
    except (MatReadError, ValueError, TypeError, OSError, NotImplementedError, KeyError) as exc:
        # NotImplementedError: a MATLAB v7.3 (HDF5) file, which the official files are not
        raise DatasetError(f"cannot read {path} as a MATLAB file: {exc}; download it again. {_HELP}") from exc
    if "X" not in mat or "y" not in mat:
        raise DatasetError(f"{path} lacks the variables 'X' and 'y' of an SVHN file. {_HELP}")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"])
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DatasetError(f"{path}: X is {x.dtype} of shape {x.shape}, expected uint8 of shape (32, 32, 3, N)")
    y = y.reshape(-1)
    if y.shape[0] != x.shape[3]:
        raise DatasetError(f"{path} holds {x.shape[3]} images but {y.shape[0]} labels")
    if not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0):
        raise DatasetError(f"{path}: labels y are not whole numbers")
    labels = y.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 10):
        raise DatasetError(f"{path}: labels span [{labels.min()}, {labels.max()}], expected 1..10 (10 = digit 0)")
    labels[labels == 10] = 0
    images = np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1)))  # (H, W, C, N) -> (N, C, H, W)
    return ImageDataset(
        name="svhn",
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels),
        classes=list(SVHN_CLASSES),
        split=split,
    )
