"""results.json written after every record, atomically, so a crash loses at most one record
and a rerun skips what is already there."""
from __future__ import annotations

import hashlib
import json
import shutil
import os
from pathlib import Path
from typing import Any

import numpy as np

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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ResultsStore:
    """A list of JSON records in ``out_dir/results.json`` plus per-record arrays in
    ``out_dir/arrays/<key>.npz`` (per-image correctness, self-supervised losses, samples)."""

    def __init__(self, out_dir: str | os.PathLike[str], resume: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.resume = resume
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise InputError(f"the output folder {self.out_dir} is a file; give a folder path")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "arrays").mkdir(exist_ok=True)
        self.path = self.out_dir / "results.json"
        self.records: list[dict[str, Any]] = []
        if resume and self.path.exists():
            try:
                data = json.loads(self.path.read_text())
            except json.JSONDecodeError as exc:
                raise InputError(f"{self.path} is not valid JSON ({exc}); move it away to start over") from exc
            if not isinstance(data, list):
                raise InputError(f"{self.path} must hold a JSON list of records")
            self.records = data
        elif not resume:
            if self.path.exists():
                atomic_write_text(self.path, "[]\n")
            for stale in (self.out_dir / "partial").glob("*") if (self.out_dir / "partial").exists() else []:
                stale.unlink()  # a fresh start must not pick up an interrupted run's batches
            if (self.out_dir / "shards").exists():  # nor an interrupted distributed run's shards
                shutil.rmtree(self.out_dir / "shards")

    def has(self, key: str) -> bool:
        return any(r.get("key") == key for r in self.records)

    def get(self, key: str) -> dict[str, Any] | None:
        return next((r for r in self.records if r.get("key") == key), None)

    def add(self, record: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
        if not isinstance(record, dict) or not isinstance(record.get("key"), str):
            raise InputError("a record must be a dict with a string 'key' (see record_key)")
        if arrays:
            name = f"arrays/{record['key']}.npz"
            tmp = self.out_dir / f"arrays/.{record['key']}.tmp.npz"
            np.savez_compressed(tmp, **arrays)
            os.replace(tmp, self.out_dir / name)
            record = {**record, "arrays": name}
        self.records = [r for r in self.records if r.get("key") != record["key"]] + [jsonable(record)]
        atomic_write_text(self.path, json.dumps(self.records, indent=1, sort_keys=True, allow_nan=False) + "\n")

    def arrays(self, record: dict[str, Any]) -> dict[str, np.ndarray]:
        if "arrays" not in record:
            return {}
        with np.load(self.out_dir / record["arrays"], allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
