"""Small helpers shared by the benchmark scripts (run as ``python bench/NAME.py``)."""
from __future__ import annotations

import time
from typing import Any, Callable


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``fn(*args)`` and its wall-clock seconds."""
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start
