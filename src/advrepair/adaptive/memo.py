"""A deterministic defense's outputs, remembered between an attack and the scoring of its result.

An attack through ``BPDA(defense)`` or a score-based attack on ``Sequential(defense, classifier)``
runs the defense on every point it tries, and the point it returns is one of them; scoring
that point then runs the defense again. For a defense whose output is a function of the one
image alone (the same bits on repeated calls and in any batch), ``DefenseMemo`` keeps each
tried point's output, keyed by the point's bytes, and scoring reads it back: the same result
for one defense pass less per image and row (for the reverse attack, a whole repair).

Whether the defense qualifies is decided by running it (``shares_outputs``), never assumed;
the protocol falls back to plain scoring otherwise.
"""
from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Any, Callable

import torch
from torch import nn

from advrepair.adaptive.contract import capabilities_of, describe_defense

#: a defense is remembered only when one pass costs more than this many times the keying of
#: its inputs (a cheap filter would pay more for the bookkeeping than it saves)
MIN_COST_RATIO = 10.0
#: memory for remembered outputs; the oldest are dropped first (an attack's returned point is
#: usually among its last tries: a fooled image leaves the batch at its success)
MEMO_BYTES = 256 * 2 ** 20


def _keys(images: torch.Tensor) -> list[bytes]:
    rows = images.detach().to("cpu").contiguous().flatten(1).numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows]


def shares_outputs(defense: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> bool:
    """True when ``defense`` gives bit-identical outputs on a repeated call and when the batch
    is split unevenly (its output for an image is then that image's alone, so an output
    computed inside an attack may stand for the scoring pass), and when it costs more than
    ``MIN_COST_RATIO`` times the keying of its inputs (else remembering saves nothing)."""
    if images.shape[0] < 3:
        return False
    with torch.no_grad():
        start = time.perf_counter()
        whole = defense(images)
        seconds = time.perf_counter() - start
        again = defense(images)
        cut = images.shape[0] // 3
        split = torch.cat([defense(images[:cut]), defense(images[cut:])])
    start = time.perf_counter()
    _keys(images)
    torch.stack([whole[i].clone() for i in range(len(whole))])
    keying = time.perf_counter() - start
    return bool(torch.equal(whole, again) and torch.equal(whole, split)) and seconds > MIN_COST_RATIO * keying


class DefenseMemo(nn.Module):
    """``defense`` with its outputs (and its iterates, when it exposes ``trajectory``) kept per
    input image, keyed by the image's bytes, up to ``max_bytes``.

    Shapes: (B, C, H, W) -> (B, C, H, W), as the defense; ``trajectory``: -> (T, B, C, H, W).
    Only for defenses that pass ``shares_outputs``. ``reused`` counts the images served from
    memory since the last ``clear``.

    Example:
        >>> memo = DefenseMemo(defense)
        >>> adv = APGDCE(nn.Sequential(BPDA(memo), classifier), eps=0.1)(x, y)
        >>> repaired = memo(adv)  # read back where the attack already ran the defense
    """

    def __init__(self, defense: Callable[[torch.Tensor], torch.Tensor], max_bytes: int = MEMO_BYTES) -> None:
        super().__init__()
        self.defense = defense
        self.keeps_iterates = capabilities_of(defense).trajectory
        self.max_bytes = max_bytes
        self._kept: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self.reused = 0

    def clear(self) -> None:
        self._kept.clear()
        self._bytes = 0
        self.reused = 0

    def _run(self, images: torch.Tensor) -> torch.Tensor:
        """(T, B, ...) iterates, T = 1 for a defense without them."""
        offered: Any = self.defense  # the contract's optional method, looked up by name
        with torch.no_grad():
            return offered.trajectory(images) if self.keeps_iterates else self.defense(images)[None]

    def _lookup(self, images: torch.Tensor) -> torch.Tensor:
        keys = _keys(images)
        found = {i: self._kept[k] for i, k in enumerate(keys) if k in self._kept}
        missing = [i for i in range(len(keys)) if i not in found]
        if missing:
            fresh = self._run(images[missing])
            for j, i in enumerate(missing):
                found[i] = fresh[:, j]
                self._remember(keys[i], fresh[:, j])
        self.reused += len(keys) - len(missing)
        return torch.stack([found[i] for i in range(len(keys))], 1)

    def _remember(self, key: bytes, iterates: torch.Tensor) -> None:
        size = iterates.numel() * iterates.element_size()
        if size > self.max_bytes:
            return
        if key not in self._kept:
            self._kept[key] = iterates.clone()
            self._bytes += size
        while self._bytes > self.max_bytes:
            _, dropped = self._kept.popitem(last=False)
            self._bytes -= dropped.numel() * dropped.element_size()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._lookup(images)[-1]

    def trajectory(self, images: torch.Tensor) -> torch.Tensor:
        return self._lookup(images)

    def params(self) -> dict[str, Any]:
        return describe_defense(self.defense)  # the defense's own name: records keep their keys


__all__ = ["DefenseMemo", "MEMO_BYTES", "MIN_COST_RATIO", "shares_outputs"]
