"""Distributed evaluation on Ray: images sharded across workers, merged deterministically.

The images are cut into ``workers`` contiguous shards; each Ray task runs
``evaluate_matrix`` on its shard (into its own store under ``out/shards/``, with keys computed
for the whole set), and the driver merges the records key by key in shard order: per-image
arrays are concatenated, accuracies recomputed from them, seconds and passes summed. Every
attack and defense seeds its randomness per image from the image's content, so the merged
results equal a single-process run with the same seeds (times aside), whatever the number
of workers. Ray is an optional extra (``pip install advrepair[ray]``); a worker is one
CPU slot or one GPU (``gpus_per_worker``).

Resumable: a shard's store keeps its finished records and, through ``evaluate_matrix``,
its per-batch state, so after a crash (a worker, the driver or the machine) a rerun with
the same images and number of workers evaluates only what no shard had saved. When one shard
fails the others still finish and save before the error is raised. The shard stores are
removed once the merged records are in the main store. On a multi-machine cluster the
output folder must be on a file system every worker can write (else pass
``persist_shards=False`` and lose in-progress shards on a crash).

The adaptive protocol shards the same way (``evaluate_adaptive_ray``): its attacked rows
run on the shards, the summary on the driver.

Example:
    >>> records = evaluate_matrix_ray(subset, entries, specs, ResultsStore("out"), workers=2)
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from advrepair.data import ImageDataset
from advrepair.errors import InputError
from advrepair.evaluation.harness import AttackSpec, ModelEntry, evaluate_matrix
from advrepair.evaluation.metrics import accuracy_of
from advrepair.evaluation.store import ResultsStore
from advrepair.runtime import resolve_device
from advrepair.validation import check_int_at_least

import torch


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError("distributed evaluation needs Ray: pip install 'advrepair[ray]' (or pip install ray)") from None
    return ray


Pieces = list[tuple[dict[str, Any], dict[str, np.ndarray]]]


def _run_shard(data: ImageDataset, models: list[ModelEntry], attacks: list[AttackSpec], batch_size: int,
               device: str, subset: str, key_images: int, shard_dir: str | None = None) -> Pieces:
    torch.set_num_threads(1)  # one CPU slot per worker
    with tempfile.TemporaryDirectory(prefix="advrepair-shard-") as tmp:
        store = ResultsStore(shard_dir or tmp, resume=True)
        records = evaluate_matrix(data, models, attacks, store, batch_size=batch_size, device=device, subset=subset,
                                  progress=False, key_images=key_images)
        return [(r, store.arrays(r)) for r in records]


def _run_adaptive_shard(data: ImageDataset, model: ModelEntry, target: Any, config: Any, batch_size: int,
                        device: str, subset: str, key_images: int, shard_dir: str | None = None) -> Pieces:
    from advrepair.evaluation.adaptive import run_adaptive_rows

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="advrepair-shard-") as tmp:
        store = ResultsStore(shard_dir or tmp, resume=True)
        records = run_adaptive_rows(data, model, target, config, store, key_images=key_images,
                                    batch_size=batch_size, device=device, subset=subset)
        return [(r, store.arrays(r)) for r in records]


def shard_dir(out_dir: Path, subset: str, n_images: int, start: int, stop: int, tag: str = "") -> Path:
    """Where shard [start, stop) of a run keeps its records and per-batch state."""
    ident = hashlib.sha1(json.dumps([subset, n_images, tag] if tag else [subset, n_images]).encode()).hexdigest()[:12]
    return Path(out_dir) / "shards" / f"{ident}-{start}-{stop}"


def shard_bounds(n: int, workers: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges, as equal as possible, in order."""
    base, extra = divmod(n, workers)
    bounds, start = [], 0
    for w in range(workers):
        stop = start + base + (1 if w < extra else 0)
        if stop > start:
            bounds.append((start, stop))
        start = stop
    return bounds


def merge_shards(parts: list[list[tuple[dict[str, Any], dict[str, np.ndarray]]]],
                 n_images: int) -> list[tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """Merge the shards' (record, arrays) lists key by key, in shard order."""
    order: list[str] = []
    by_key: dict[str, list[tuple[dict[str, Any], dict[str, np.ndarray]]]] = {}
    for part in parts:
        for record, arrays in part:
            if record["key"] not in by_key:
                order.append(record["key"])
            by_key.setdefault(record["key"], []).append((record, arrays))
    merged = []
    for key in order:
        pieces = by_key[key]
        if len(pieces) != len(parts):
            raise RuntimeError(f"record {key} came back from {len(pieces)} of {len(parts)} shards")
        records = [r for r, _ in pieces]
        correct = np.concatenate([a["correct"] for _, a in pieces])
        if correct.size != n_images:
            raise RuntimeError(f"record {key}: shards cover {correct.size} images, expected {n_images}")
        acc = accuracy_of(torch.from_numpy(correct))
        sizes = [a["correct"].size for _, a in pieces]
        record = {k: v for k, v in records[0].items() if k != "arrays"}
        record.update(accuracy=acc.value, stderr=acc.stderr, n_correct=acc.correct,
                      attack_seconds=sum(r["attack_seconds"] for r in records),
                      defense_seconds=sum(r["defense_seconds"] for r in records),
                      seconds=sum(r["seconds"] for r in records), shards=len(parts))
        record["attack_cost"] = {k: sum(r["attack_cost"][k] * s for r, s in zip(records, sizes)) / n_images
                                 for k in records[0]["attack_cost"]}
        if any(r.get("attack_members") for r in records):
            record["attack_members"] = [r.get("attack_members") for r in records]
        record_arrays: dict[str, np.ndarray] = {"correct": correct}
        for name in pieces[0][1]:
            if name in ("ssl_loss_input", "ssl_loss_repaired"):
                record_arrays[name] = np.concatenate([a[name] for _, a in pieces])
            elif name == "correct_iterates":
                record_arrays[name] = np.concatenate([a[name] for _, a in pieces], axis=1)
                record["iterate_accuracy"] = record_arrays[name].mean(1).tolist()
                record["worst_over_iterates"] = float(record_arrays[name].all(0).mean())
            elif name != "correct":
                record_arrays[name] = pieces[0][1][name]  # kept samples: the first images, as in one process
        merged.append((record, record_arrays))
    return merged


def _check_common(data: ImageDataset, workers: Any, batch_size: Any, gpus_per_worker: Any, device: str) -> None:
    check_int_at_least(workers, "workers", 1)
    check_int_at_least(batch_size, "batch_size", 1)
    if len(data) == 0:
        raise InputError("there are no images to evaluate (the dataset is empty)")
    if isinstance(gpus_per_worker, bool) or not isinstance(gpus_per_worker, (int, float)) or gpus_per_worker < 0:
        raise InputError(f"gpus_per_worker must be a number >= 0, got {gpus_per_worker!r}")
    resolve_device(device)  # an unknown device fails here, not inside every shard


def _run_sharded(fn: Any, args: tuple[Any, ...], data: ImageDataset, store: ResultsStore, *, workers: int,
                 address: str | None, gpus_per_worker: float, subset: str, persist_shards: bool,
                 tag: str = "") -> list[dict[str, Any]]:
    """Run ``fn(shard, *args, subset, len(data), shard_dir)`` on every shard as a Ray task, merge
    the pieces into ``store`` and return the merged records in order."""
    bounds = shard_bounds(len(data), workers)
    dirs = [shard_dir(store.out_dir, subset, len(data), a, b, tag) if persist_shards else None for a, b in bounds]
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        if address is None:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
        started = True
    try:
        task = ray.remote(num_cpus=1, num_gpus=gpus_per_worker, max_retries=0)(fn)
        futures = [task.remote(data.subset(range(a, b)), *args, subset, len(data), None if d is None else str(d))
                   for (a, b), d in zip(bounds, dirs)]
        ray.wait(futures, num_returns=len(futures))  # let every shard finish (and save) before judging
        parts, failed = [], []
        for (a, b), future in zip(bounds, futures):
            try:
                parts.append(ray.get(future))
            except Exception as exc:  # noqa: BLE001 - reported below with every failed shard
                failed.append(f"images [{a}, {b}): {type(exc).__name__}: {str(exc).strip().splitlines()[-1]}")
        if failed:
            hint = " Finished batches are saved; rerun the same command to resume." if persist_shards else ""
            raise RuntimeError(f"{len(failed)} of {len(bounds)} shards failed: " + "; ".join(failed) + hint)
    finally:
        if started:
            ray.shutdown()
    out = []
    for record, arrays in merge_shards(parts, len(data)):
        if not store.has(record["key"]):
            store.add(record, arrays)
        out.append(store.require(record["key"]))
    for d in dirs:
        if d is not None and d.exists():
            shutil.rmtree(d)
    if persist_shards and (store.out_dir / "shards").exists() and not any((store.out_dir / "shards").iterdir()):
        (store.out_dir / "shards").rmdir()
    return out


def evaluate_matrix_ray(data: ImageDataset, models: list[ModelEntry], attacks: list[AttackSpec],
                        store: ResultsStore, *, workers: int = 2, address: str | None = None,
                        gpus_per_worker: float = 0.0, batch_size: int = 250, device: str = "cpu",
                        subset: str = "", persist_shards: bool = True) -> list[dict[str, Any]]:
    """``evaluate_matrix`` with the images sharded over ``workers`` Ray tasks.

    ``address``: an existing cluster ("auto" or "ray://host:port"); ``None`` starts a local
    one with ``workers`` CPUs. Records already in ``store`` are kept; shards resume from
    ``store.out_dir/shards`` (see the module docstring) unless ``persist_shards`` is False.

    Raises:
        RuntimeError: naming the shards that failed, after every other shard has finished.
    """
    _check_common(data, workers, batch_size, gpus_per_worker, device)
    return _run_sharded(_run_shard, (models, attacks, batch_size, device), data, store, workers=workers,
                        address=address, gpus_per_worker=gpus_per_worker, subset=subset,
                        persist_shards=persist_shards)


def evaluate_adaptive_ray(data: ImageDataset, model: ModelEntry, target: Any, config: Any, store: ResultsStore,
                          *, workers: int = 2, address: str | None = None, gpus_per_worker: float = 0.0,
                          batch_size: int = 100, device: str = "cpu", subset: str = "",
                          persist_shards: bool = True, progress: bool = True) -> dict[str, Any]:
    """The adaptive protocol (``run_adaptive``) with its attacked rows sharded over Ray tasks.

    Each shard runs every row on its images (``run_adaptive_rows``, resumable like the
    matrix); the rows are merged into ``store`` and the driver then computes the summary
    (per-image worst case, flags on a 32-image probe, randomized clean accuracy) exactly as
    a single process would, from the same per-image arrays. Returns the summary record.
    """
    from advrepair.evaluation.adaptive import AdaptiveConfig, DefenseUnderTest, run_adaptive

    if not isinstance(target, DefenseUnderTest) or not isinstance(config, AdaptiveConfig):
        raise InputError("evaluate_adaptive_ray needs a DefenseUnderTest and an AdaptiveConfig")
    _check_common(data, workers, batch_size, gpus_per_worker, device)
    _run_sharded(_run_adaptive_shard, (model, target, config, batch_size, device), data, store, workers=workers,
                 address=address, gpus_per_worker=gpus_per_worker, subset=subset, persist_shards=persist_shards,
                 tag=f"adaptive:{model.name}:{target.label}")
    return run_adaptive(data, model, target, config, store, batch_size=batch_size, device=device, subset=subset,
                        progress=progress)
