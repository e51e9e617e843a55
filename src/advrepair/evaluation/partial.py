"""Per-batch state of a cell group in progress, so a killed evaluation resumes mid-record.

After every batch the running per-image arrays (correctness, self-supervised losses,
iterate correctness, kept samples) and the scalars (seconds, attack passes) go to
``out/partial/<id>.npz`` + ``.json``, each written to a temporary name and renamed. On
restart the same cells (same keys, batch size and image count) pick up after the last
finished batch; nothing is evaluated twice. Attacks and defenses seed per image, so a
resumed run gives the same per-image results as an uninterrupted one. No pickle: numpy
archives are read with ``allow_pickle=False``.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advrepair.durable import write_durably
from advrepair.evaluation.store import atomic_write_text

Groups = dict[str, dict[Any, list[torch.Tensor]]]
_NONE = "__undefended__"


class PartialCells:
    """Save and restore the running state of one ``_evaluate_cells`` call."""

    def __init__(self, out_dir: Path, keys: list[str], batch_size: int, n_images: int) -> None:
        ident = hashlib.sha1(json.dumps([sorted(keys), batch_size, n_images]).encode()).hexdigest()[:16]
        self.dir = Path(out_dir) / "partial"
        self.arrays_path = self.dir / f"{ident}.npz"
        self.meta_path = self.dir / f"{ident}.json"
        self.meta_base = {"keys": sorted(keys), "batch_size": batch_size, "n_images": n_images}

    def save(self, batches_done: int, groups: Groups, seconds: dict[Any, float], stats: Any) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        arrays = {f"{group}/{_NONE if k is None else k}/{i}": t.numpy()
                  for group, lists in groups.items() for k, ts in lists.items() for i, t in enumerate(ts)}
        write_durably(self.arrays_path, lambda f: np.savez(f, **dict[str, Any](arrays)))
        meta = {**self.meta_base, "batches_done": batches_done,
                "seconds": {(_NONE if k is None else k): v for k, v in seconds.items()},
                "stats": None if stats is None else {"images": stats.images, "forward": stats.forward,
                                                     "backward": stats.backward},
                "arrays_sha1": _sha1(self.arrays_path)}
        atomic_write_text(self.meta_path, json.dumps(meta))

    def restore(self, groups: Groups, seconds: dict[Any, float], stats: Any) -> int:
        """Fill ``groups``/``seconds``/``stats`` from a matching saved state; returns the
        number of finished batches (0 when there is none or it does not match)."""
        if not (self.meta_path.exists() and self.arrays_path.exists()):
            return 0
        try:
            meta = json.loads(self.meta_path.read_text())
            if not isinstance(meta, dict) or not isinstance(meta.get("batches_done"), int):
                return 0
        except (json.JSONDecodeError, UnicodeDecodeError):
            return 0  # a torn or truncated state file: start the record over
        if any(meta.get(k) != v for k, v in self.meta_base.items()) or meta.get("arrays_sha1") != _sha1(
                self.arrays_path):
            return 0  # another run's state, or arrays and meta from different saves, or torn arrays
        try:
            with np.load(self.arrays_path, allow_pickle=False) as f:
                loaded = {name: torch.from_numpy(f[name]) for name in f.files}
        except (OSError, ValueError, zipfile.BadZipFile):
            return 0
        for name in sorted(loaded, key=lambda n: (n.rsplit("/", 1)[0], int(n.rsplit("/", 1)[1]))):
            group, rest = name.split("/", 1)
            key = rest.rsplit("/", 1)[0]
            groups[group][None if key == _NONE else key].append(loaded[name])
        for k, v in meta["seconds"].items():
            seconds[None if k == _NONE else k] = v
        if stats is not None and meta.get("stats"):
            stats.images, stats.forward, stats.backward = (meta["stats"][k] for k in ("images", "forward", "backward"))
        return int(meta["batches_done"])

    def clear(self) -> None:
        for path in (self.meta_path, self.arrays_path):
            path.unlink(missing_ok=True)


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()
