"""Per-image worst case across attack runs: an image counts as robust only if every run
left it correctly classified. Computed from the per-image correctness each record stores."""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np

from advrepair.errors import InputError
from advrepair.evaluation.metrics import Accuracy
from advrepair.evaluation.store import ResultsStore


def worst_case(store: ResultsStore, records: list[dict[str, Any]]) -> Accuracy:
    """Accuracy of the per-image AND of ``records``' correctness (same images, same order).

    Raises:
        InputError (a ValueError): if the records cover different image counts or lack per-image arrays.
    """
    if not isinstance(store, ResultsStore):
        raise InputError(f"store must be a ResultsStore, got {type(store).__name__}")
    if not records:
        raise InputError("worst_case needs at least one record")
    for r in records:
        if not isinstance(r, dict) or "n_images" not in r:
            raise InputError(f"worst_case needs result records (dicts with n_images), got {str(r)[:100]}")
    subsets = {r.get("subset") for r in records}
    if len(subsets) != 1:
        raise InputError(f"records cover different images (subsets={sorted(map(str, subsets))})")
    return Accuracy.of(worst_case_correct(store, records))


def _correct(arrays: dict[str, np.ndarray]) -> np.ndarray:
    return arrays["correct"]


def worst_case_correct(store: ResultsStore, records: Iterable[dict[str, Any]],
                       per_image: Callable[[dict[str, np.ndarray]], np.ndarray] = _correct) -> np.ndarray:
    """The per-image AND over ``records`` of ``per_image(arrays)`` (default: the stored
    correctness), as a (N,) bool array. The one copy of the worst case: the report, the
    adaptive protocol and the experiments all call it.

    Raises:
        InputError: no records, records of different image counts, or one without the array.
    """
    records = list(records)
    if not records:
        raise InputError("a worst case needs at least one record")
    sizes = {r["n_images"] for r in records}
    if len(sizes) != 1:
        raise InputError(f"records cover different images (different image counts {sorted(sizes)})")
    correct = np.ones(sizes.pop(), dtype=bool)
    for r in records:
        arrays = store.arrays(r)
        if "correct" not in arrays:
            raise InputError(f"record {r.get('key')} has no per-image correctness")
        correct &= per_image(arrays).astype(bool)
    return correct
