"""Eval mode for every network inside a defense while it runs, restored afterwards.

Defenses run their networks (classifier, heads, f_b) in eval mode so BatchNorm statistics
are never updated by test images (the reverse attack's reference code left them in training
mode); the caller's modes come back unchanged. :func:`gradient_loop` adds what a defense's
own gradient loop (a repair, a transformation) wants besides: input gradients by taps.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

from advrepair.engine import fast_input_gradients


class eval_mode:  # noqa: N801 - used like torch.no_grad
    """``with eval_mode(module): ...``"""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.modes: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> None:
        self.modes = [(m, m.training) for m in self.module.modules()]
        self.module.eval()

    def __exit__(self, *exc: object) -> None:
        for m, mode in self.modes:
            m.train(mode)


@contextlib.contextmanager
def gradient_loop(module: nn.Module, tap_gradients: bool = True) -> Iterator[None]:
    """``eval_mode(module)`` and ``fast_input_gradients(module, enabled=tap_gradients)``."""
    with eval_mode(module), fast_input_gradients(module, enabled=tap_gradients):
        yield
