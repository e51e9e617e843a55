"""Defenses by name, each with the settings the papers commonly use; a user's by ``module:factory``.

Each defense module registers its class with ``@register_defense("jpeg", quality=75)``; the
keyword arguments are the defaults ``make_defense`` starts from.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, TypeVar

from torch import nn

from advrepair.errors import InputError
from advrepair.factories import call_factory, is_factory_spec, load_factory


@dataclasses.dataclass(frozen=True)
class RegisteredDefense:
    cls: type[nn.Module]
    defaults: dict[str, Any]

    def accepts(self) -> set[str]:
        params = inspect.signature(self.cls.__init__).parameters
        return {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self"}


#: every defense that needs nothing but its settings (no classifier, no trained network)
DEFENSES: dict[str, RegisteredDefense] = {}

DefenseClass = TypeVar("DefenseClass", bound=type[nn.Module])


def register_defense(name: str, **defaults: Any) -> Callable[[DefenseClass], DefenseClass]:
    """Class decorator: ``@register_defense("median", kernel_size=3)``."""
    def register(cls: DefenseClass) -> DefenseClass:
        if name in DEFENSES and DEFENSES[name].cls is not cls:
            raise InputError(f"defense name {name!r} is already registered to {DEFENSES[name].cls.__name__}")
        DEFENSES[name] = RegisteredDefense(cls, dict(defaults))
        return cls
    return register


def make_defense(name: str, *, seed: int | None = 0, **params: Any) -> Callable[..., Any]:
    """A registered defense with its defaults updated by ``params`` (``seed`` goes to those
    that take one), or a user's ``module:factory`` called with those of ``seed`` and ``params``
    it names.

    Raises:
        InputError: an unknown name or a parameter the defense does not take.
    """
    if is_factory_spec(name):
        return call_factory(load_factory(name), seed=seed, **params)
    if name not in DEFENSES:
        raise InputError(f"unknown defense {name!r}; known: {sorted(DEFENSES)} or module:factory")
    entry = DEFENSES[name]
    accepted = entry.accepts()
    unknown = set(params) - accepted
    if unknown:
        raise InputError(f"defense {name!r} has no parameters {sorted(unknown)}; it takes {sorted(accepted)}")
    options = {**entry.defaults, **params}
    if "seed" in accepted:
        options["seed"] = seed
    return entry.cls(**options)


__all__ = ["DEFENSES", "RegisteredDefense", "make_defense", "register_defense"]
