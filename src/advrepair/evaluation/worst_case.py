"""Per-image worst case across attack runs: an image counts as robust only if every run
left it correctly classified. Computed from the per-image correctness each record stores."""
from __future__ import annotations

from typing import Any

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
    sizes = {r["n_images"] for r in records}
    subsets = {r.get("subset") for r in records}
    if len(sizes) != 1 or len(subsets) != 1:
        raise InputError(f"records cover different images (n={sorted(sizes)}, subsets={sorted(map(str, subsets))})")
    correct = np.ones(sizes.pop(), dtype=bool)
    for r in records:
        arrays = store.arrays(r)
        if "correct" not in arrays:
            raise InputError(f"record {r.get('key')} has no per-image correctness")
        correct &= arrays["correct"].astype(bool)
    return Accuracy(int(correct.sum()), int(correct.size))
