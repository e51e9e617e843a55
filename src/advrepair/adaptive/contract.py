"""The defense contract: what an adaptive evaluation reads from a defense, and what it does
when a piece is missing.

A defense is anything callable that maps images (B, C, H, W) in [0, 1] to images of the same
shape. Nothing else is required. Each optional piece below makes the evaluation stronger or
its records better named; the protocol (``evaluation.adaptive``) and the audit
(``advrepair.audit``) both read a defense only through ``capabilities_of`` and
``describe_defense`` here.

    piece                          used for                          when absent
    -----------------------------  --------------------------------  -----------------------------------------
    params() -> dict               the record's name and key          a fingerprint: class, weights, settings
    trajectory(x) -> (T, B, ...)   worst case over the defense's      the worst case is over outputs only
                                   own iterates
    bpda_surrogate() -> Module     full-gradient row (a smooth        the full-gradient row differentiates the
                                   stand-in, e.g. differentiable      defense itself (the gradient flag says
                                   JPEG)                              when that gradient is zero or NaN)
    variant(steps=, surrogate=,    full-gradient row through a        as above
      checkpoint=) (iterative      shortened, differentiable unroll
      defenses)
    ssl_loss(x, stream=,           the defense-aware rows             rows skipped, with a note
      differentiable=) -> (B,)     (L_c - lambda L_s)
    fresh_randomness() -> Module   EOT draws of a defense whose       ``variant(seed=None)``, else a copy with
                                   randomness is keyed to its input   ``seed = None``, else tiny input nudges
                                                                      (each nudge keys a new draw)
    rowwise_randomness = True      EOT draws in one batch: each row   one call per draw
      (on the EOT draws' module)   draws its own randomness, so the
                                   stacked copies of an image are
                                   independent draws

Whether a defense is randomized is never read from its attributes: ``detect_randomness``
runs it (see ``adaptive.randomness``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class TestTimeDefense(Protocol):
    """The one required piece: images in, images out (same shape, values in [0, 1])."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


class Describes(Protocol):
    def params(self) -> dict[str, Any]: ...


class HasTrajectory(Protocol):
    def trajectory(self, images: torch.Tensor) -> torch.Tensor: ...


class HasSurrogate(Protocol):
    def bpda_surrogate(self) -> nn.Module: ...


class HasSSLLoss(Protocol):
    def ssl_loss(self, images: torch.Tensor, stream: str = ..., differentiable: bool = ...) -> torch.Tensor: ...

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


class DrawsFreshRandomness(Protocol):
    def fresh_randomness(self) -> Callable[[torch.Tensor], torch.Tensor]: ...


@dataclasses.dataclass(frozen=True)
class DefenseCapabilities:
    """Which optional pieces of the contract a defense offers."""

    params: bool
    trajectory: bool
    bpda_surrogate: bool
    unroll: bool
    ssl_loss: bool
    fresh_randomness: bool
    rowwise_randomness: bool = False

    def absent(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if not getattr(self, f.name)]


def _has(defense: Any, name: str) -> bool:
    return callable(getattr(defense, name, None))


def capabilities_of(defense: Any) -> DefenseCapabilities:
    """What the contract finds on ``defense``. An unroll needs both ``variant`` and ``steps``
    (the reverse attack's shape: ``variant(steps=..., surrogate=..., checkpoint=...)``)."""
    return DefenseCapabilities(params=_has(defense, "params"), trajectory=_has(defense, "trajectory"),
                               bpda_surrogate=_has(defense, "bpda_surrogate"),
                               unroll=_has(defense, "variant") and isinstance(getattr(defense, "steps", None), int),
                               ssl_loss=_has(defense, "ssl_loss"), fresh_randomness=_has(defense, "fresh_randomness"),
                               rowwise_randomness=getattr(defense, "rowwise_randomness", False) is True)


def _scalar_settings(obj: Any) -> dict[str, Any]:
    """The plain settings an object holds (numbers, strings, booleans, None and tuples of them):
    two configurations of one class differ here even when they hold no weights."""
    simple = (int, float, str, bool, type(None))
    out: dict[str, Any] = {}
    for name, value in sorted(vars(obj).items()) if hasattr(obj, "__dict__") else []:
        if name.startswith("_") and name not in ("_modules",):
            continue
        if isinstance(value, simple):
            out[name] = value
        elif isinstance(value, (tuple, list)) and all(isinstance(v, simple) for v in value):
            out[name] = list(value)
    return out


def fingerprint(defense: Any) -> str:
    """SHA-256 (16 hex digits) of what makes a defense what it is: its class, its weights and
    buffers, the plain settings of it and of every submodule, and for a plain function its
    name, defaults and closure values."""
    h = hashlib.sha256()
    kind = type(defense)
    h.update(f"{kind.__module__}.{kind.__qualname__}".encode())
    if isinstance(defense, nn.Module):
        for name, tensor in sorted(defense.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
        for name, module in defense.named_modules():
            h.update(json.dumps([name, type(module).__qualname__, _scalar_settings(module)], default=str).encode())
    else:
        target = defense.func if hasattr(defense, "func") and hasattr(defense, "args") else defense  # partial
        h.update(getattr(target, "__qualname__", repr(target)).encode())
        closure = [c.cell_contents for c in getattr(target, "__closure__", None) or ()]
        extras = [getattr(defense, "args", ()), getattr(defense, "keywords", {}),
                  getattr(target, "__defaults__", None), closure, _scalar_settings(defense)]
        h.update(json.dumps(extras, default=repr).encode())
    return h.hexdigest()[:16]


def describe_defense(defense: Any) -> dict[str, Any]:
    """The defense as results records name it: its ``params()`` if it has them, else its class
    and fingerprint, so two configurations of one user defense never share a record."""
    if _has(defense, "params"):
        return dict(defense.params())
    kind = type(defense)
    name = kind.__qualname__ if isinstance(defense, nn.Module) else getattr(defense, "__qualname__", kind.__qualname__)
    return {"name": name, "module": kind.__module__, "fingerprint": fingerprint(defense)}


def describe_model(model: nn.Module) -> str:
    """SHA-256 (16 hex digits) of a classifier's weights and buffers: its identity in keys
    when it comes without a card."""
    return fingerprint(model)




class _CallableDefense(nn.Module):
    """A plain function ``images -> images`` as a module, named by the function it wraps."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fn(images)

    def params(self) -> dict[str, Any]:
        return describe_defense(self.fn)


def as_module(defense: Callable[[torch.Tensor], torch.Tensor]) -> nn.Module:
    """``defense`` itself if it is an nn.Module, else a module around the callable (the
    contract's optional pieces are read from the callable's own attributes only when it is
    a module)."""
    return defense if isinstance(defense, nn.Module) else _CallableDefense(defense)


__all__ = ["DefenseCapabilities", "Describes", "DrawsFreshRandomness", "HasSSLLoss", "HasSurrogate",
           "HasTrajectory", "TestTimeDefense", "as_module", "capabilities_of", "describe_defense", "describe_model",
           "fingerprint"]
