"""Reader for the IDX format of (Fashion-)MNIST, plain or gzip-compressed.

An IDX file is a 4-byte magic number ``0x0000TTDD`` (``TT`` the element type,
``DD`` the number of dimensions), ``DD`` big-endian uint32 sizes, then the data.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from advrepair.errors import DatasetError

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, rows, cols)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N,)


def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when its name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        # gzip raises BadGzipFile (an OSError) or EOFError on a cut download
        raise DatasetError(f"cannot read IDX file {path}: {exc}; the file is damaged, download it again") from exc


def read_idx(path: str | os.PathLike[str], expected_magic: int) -> np.ndarray:
    """Read one IDX file of unsigned bytes and return it as a uint8 array.

    Args:
        path: the file (``.gz`` is decompressed).
        expected_magic: ``IDX_IMAGES_MAGIC`` (returns shape (N, rows, cols)) or
            ``IDX_LABELS_MAGIC`` (returns shape (N,)).

    Raises:
        DatasetError: wrong magic number, zero-sized dimension, or a file length
            that does not match the header (truncated or trailing bytes).
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DatasetError(f"IDX file {path} is {len(raw)} bytes long, too short for a header; download it again")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic != expected_magic:
        raise DatasetError(
            f"IDX file {path} has magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"({'images' if expected_magic == IDX_IMAGES_MAGIC else 'labels'}); "
            "is it the right file, and decompressed if its name has no .gz?"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"IDX file {path} is truncated inside its header ({len(raw)} bytes); download it again")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if any(d == 0 for d in dims[1:]):
        raise DatasetError(f"IDX file {path} declares a zero-sized dimension {dims}")
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "longer than its header says"
        raise DatasetError(
            f"IDX file {path} is {kind}: {len(raw)} bytes, expected {expected} for dimensions {dims}; "
            "download it again"
        )
    # copy: np.frombuffer over bytes is read-only and torch.from_numpy warns on that
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()
