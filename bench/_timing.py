"""Small helpers shared by the benchmark scripts (run as ``python bench/NAME.py``)."""
from __future__ import annotations

import platform
import time
from typing import Any, Callable

import torch


def synchronize() -> None:
    """Wait for queued CUDA work (a no-op on the CPU), so wall-clock times cover it."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``fn(*args)`` and its wall-clock seconds, GPU work included."""
    synchronize()
    start = time.perf_counter()
    result = fn(*args)
    synchronize()
    return result, time.perf_counter() - start


def matmul_peak_gflops(device: torch.device, repeats: int = 5) -> dict[str, float]:
    """The best fp32 ``torch.mm`` rate (GFLOP/s) at a few square sizes on ``device``: a practical
    ceiling on the FLOP rate any convolution engine reaches there."""
    rates: dict[str, float] = {}
    for n in (256, 512, 1024, 2048) if device.type == "cpu" else (1024, 2048, 4096, 8192):
        a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
        torch.mm(a, b)
        best = float("inf")
        for _ in range(repeats):
            best = min(best, timed(torch.mm, a, b)[1])
        rates[str(n)] = 2 * n ** 3 / best / 1e9
    return rates


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's as the platform reports it (recorded beside the timings)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
