"""Architectures by name, so a JSON card can rebuild the module its weights belong to."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from advrepair.errors import CheckpointError, InputError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_architecture(name: str, builder: Callable[..., nn.Module]) -> None:
    """Make ``build_model(name, **config)`` call ``builder(**config)``."""
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"architecture name must be a non-empty string, got {name!r}")
    if not callable(builder):
        raise InputError(f"architecture {name!r} needs a callable builder (config -> nn.Module), "
                         f"got {type(builder).__name__}")
    _BUILDERS[name] = builder


def available_architectures() -> list[str]:
    return sorted(_BUILDERS)


def build_model(arch: str, **config: Any) -> nn.Module:
    """Instantiate a registered architecture from its constructor arguments."""
    if not isinstance(arch, str) or arch not in _BUILDERS:
        raise CheckpointError(f"unknown architecture {arch!r}; known: {available_architectures()}")
    try:
        return _BUILDERS[arch](**config)
    except TypeError as exc:
        raise CheckpointError(f"architecture {arch!r} rejects the config {config}: {exc}") from exc
