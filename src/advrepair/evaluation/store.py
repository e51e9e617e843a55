"""results.json written after every record, atomically and durably, so a crash loses at most
one record and a rerun skips what is already there; concurrent writers merge under a lock."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from advrepair.durable import FolderLock, make_folder, write_durably, write_text_durably
from advrepair.errors import InputError


def record_key(**parts: Any) -> str:
    """A stable key for one (dataset, model, attack, defense) cell of the matrix."""
    blob = json.dumps(jsonable(parts), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def jsonable(value: Any) -> Any:
    """Strict JSON: infinities become the strings "inf"/"-inf", NaN becomes null."""
    if isinstance(value, float):
        if value != value:
            return None
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` by ``text``, atomically and durably (see ``advrepair.durable``)."""
    write_text_durably(path, text)


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


#: arrays files a store keeps in memory once read
ARRAYS_KEPT = 512

class ResultsStore:
    """A list of JSON records in ``out_dir/results.json`` plus per-record arrays in
    ``out_dir/arrays/<key>.npz`` (per-image correctness, self-supervised losses, samples).

    Several processes may write into one folder at once (two ``advrepair eval`` runs, Ray
    shards and their driver): every ``add`` takes the folder's lock, re-reads results.json,
    merges its record in by key and writes the file back, so no writer loses another's
    records. Each record names the SHA-256 of its arrays; a record whose arrays are missing,
    torn or changed is not trusted on reading and is computed again.
    """

    def __init__(self, out_dir: str | os.PathLike[str], resume: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.resume = resume
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise InputError(f"the output folder {self.out_dir} is a file; give a folder path")
        make_folder(self.out_dir)
        make_folder(self.out_dir / "arrays")
        self.path = self.out_dir / "results.json"
        self.lock = FolderLock(self.out_dir)
        self.records: list[dict[str, Any]] = []
        self._verified: set[tuple[str, str]] = set()  # (arrays file, SHA-256) already checked
        # arrays read before, by (file, SHA-256): a file is never rewritten under the same digest
        # and reports read the same record's arrays many times
        self._loaded: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        with self.lock:
            if resume:
                self.records = self._trusted(self._read())
            else:
                if self.path.exists():
                    atomic_write_text(self.path, "[]\n")
                for stale in (self.out_dir / "partial").glob("*") if (self.out_dir / "partial").exists() else []:
                    stale.unlink()  # a fresh start must not pick up an interrupted run's batches
                if (self.out_dir / "shards").exists():  # nor an interrupted distributed run's shards
                    shutil.rmtree(self.out_dir / "shards")

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        try:
            data = json.loads(self.path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{self.path} is not valid JSON ({exc}); move it away to start over") from exc
        if not isinstance(data, list):
            raise InputError(f"{self.path} must hold a JSON list of records")
        return data

    def _trusted(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The records whose arrays are there and match their checksum (each file hashed once:
        ``add`` re-reads the whole list and must not re-hash every record's arrays each time)."""
        kept = []
        for r in records:
            if not isinstance(r, dict):
                continue
            name, digest = r.get("arrays"), r.get("arrays_sha256")
            if name is None or digest is None or (name, digest) in self._verified:
                kept.append(r)
                continue
            if _sha256(self.out_dir / name) == digest:
                self._verified.add((name, digest))
            else:
                warnings.warn(f"{self.out_dir / name} is missing or does not match its checksum; the record "
                              f"{r.get('key')} will be computed again", RuntimeWarning, stacklevel=3)
                continue
            kept.append(r)
        return kept

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """The records whose ``kind`` is ``kind`` (summaries, sweeps, ...), oldest first."""
        return [r for r in self.records if r.get("kind") == kind]

    def has(self, key: str) -> bool:
        return any(r.get("key") == key for r in self.records)

    def get(self, key: str) -> dict[str, Any] | None:
        return next((r for r in self.records if r.get("key") == key), None)

    def require(self, key: str) -> dict[str, Any]:
        """The record ``key``, which the caller knows is there (it has just added or found it)."""
        record = self.get(key)
        if record is None:
            raise InputError(f"no record {key!r} in {self.path}")
        return record

    def add(self, record: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
        if not isinstance(record, dict) or not isinstance(record.get("key"), str):
            raise InputError("a record must be a dict with a string 'key' (see record_key)")
        with self.lock:
            if arrays:
                name = f"arrays/{record['key']}.npz"
                write_durably(self.out_dir / name, lambda f: np.savez_compressed(f, **dict[str, Any](arrays)))
                digest = _sha256(self.out_dir / name)
                assert digest is not None  # just written
                self._verified.add((name, digest))
                record = {**record, "arrays": name, "arrays_sha256": digest}
            on_disk = self._trusted(self._read())
            theirs = {r.get("key") for r in on_disk}
            mine = [r for r in self.records if r.get("key") not in theirs and r.get("key") != record["key"]]
            self.records = [r for r in on_disk if r.get("key") != record["key"]] + mine + [jsonable(record)]
            atomic_write_text(self.path, json.dumps(self.records, indent=1, sort_keys=True, allow_nan=False) + "\n")

    def arrays(self, record: dict[str, Any]) -> dict[str, np.ndarray]:
        if "arrays" not in record:
            return {}
        digest = record.get("arrays_sha256")
        key = (str(record["arrays"]), str(digest))
        loaded = self._loaded.get(key) if digest is not None else None
        if loaded is None:
            with np.load(self.out_dir / record["arrays"], allow_pickle=False) as f:
                loaded = {k: f[k] for k in f.files}
            if digest is not None:
                if len(self._loaded) >= ARRAYS_KEPT:
                    self._loaded.pop(next(iter(self._loaded)))
                self._loaded[key] = loaded
        return {k: v.copy() for k, v in loaded.items()}  # callers may change theirs
