"""Writes small generated datasets in the real on-disk formats."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

from conftest import make_shapes


def write_fashion_mnist(folder: Path, n_train: int = 600, n_test: int = 200) -> Path:
    """Ten classes of bars at different angles, as gzipped IDX files under Debian's names."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        ds = make_shapes(n, seed=seed, classes=10)
        images = ds.images[:, 0].numpy()
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 0x801, n) + ds.labels.numpy().astype("uint8").tobytes())
    return folder
