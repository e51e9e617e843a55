"""Keep the memory torch frees inside the process (glibc's allocator), on by default.

No paper is implemented here. Our choice and its evidence:

glibc returns large freed blocks to the kernel: blocks above its mmap threshold are unmapped
when freed, and free memory at the heap's top beyond its trim threshold is trimmed. An attack
step or a RIDE step frees and reallocates the same activations every iteration, so each step
faulted its tensors' pages in afresh. Raising both thresholds keeps the blocks for reuse: a
reverse-attack bench run took 83k page faults instead of 741k at the same peak memory. The
threshold cannot go above 32 MiB, and blocks above it were still mapped and unmapped on every
use (the repair's default chunk writes 51 MB activations on the zoo CNN: 2.5-10k faults per step),
so no block is mapped at all: every one comes from the heap and returns to it (0 faults per step
in steady state, peak RSS 520 MB instead of 555, 7-11% more images per second; session 15). What
that saves depends on the VM's state; on this project's 2-core CPU within one day, 15-40% of a
batched RIDE step and 0-45% of a plain batched reverse attack (bench/reference/*-2026-12-07*.json,
NOTES.md, session 13). Values never change; the cost is that the process keeps its peak heap
(free heap top up to 1 GiB) instead of returning it.

``import advrepair`` turns it on. ``ADVREPAIR_RETAIN_FREED_MEMORY=0`` keeps glibc's defaults
(the benchmarks use it to measure both). Other C libraries (musl, macOS, Windows) are left alone.
"""
from __future__ import annotations

import ctypes
import os
import sys

# mallopt's parameters (malloc.h) and our values: the mmap threshold at glibc's ceiling for it on
# 64-bit (32 MiB), no mapped blocks (larger requests too come from the heap; glibc still maps one
# where the heap cannot grow, e.g. above 64 MiB in a thread's arena), a free heap top of up to 1 GiB kept
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_MMAP_THRESHOLD = 32 * 2 ** 20
_MMAP_MAX = 0
_TRIM_THRESHOLD = 2 ** 30
ENV_SWITCH = "ADVREPAIR_RETAIN_FREED_MEMORY"

_retaining = False


def retain_freed_memory() -> bool:
    """Keep freed memory in the process instead of returning it to the kernel.

    Returns True when the allocator now retains freed memory (also after an earlier call), False
    where it cannot (not glibc) or ``ADVREPAIR_RETAIN_FREED_MEMORY=0`` is set.

    Example:
        >>> retain_freed_memory()
        True
    """
    global _retaining
    if _retaining:
        return True
    if os.environ.get(ENV_SWITCH, "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # a C library without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _retaining = all(mallopt(option, value) for option, value in (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD), (_M_MMAP_MAX, _MMAP_MAX), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)))
    return _retaining


def retaining_freed_memory() -> bool:
    """Whether this process retains freed memory (recorded beside results and benchmarks)."""
    return _retaining
