"""Attacks by name, with parameters from strings like ``pgd:eps=0.1,steps=20``."""
from __future__ import annotations

import inspect
from typing import Any, Callable, TypeVar

import torch

from advrepair.attacks.base import Attack
from advrepair.errors import InputError
from advrepair.factories import call_factory_exactly, is_factory_spec, load_factory

#: every registered attack by name; each attack module registers itself with ``register_attack``
ATTACKS: dict[str, type[Attack]] = {}

AttackClass = TypeVar("AttackClass", bound=type[Attack])


def register_attack(name: str) -> Callable[[AttackClass], AttackClass]:
    """Class decorator: ``@register_attack("pgd")`` makes the class buildable by name."""
    def register(cls: AttackClass) -> AttackClass:
        if name in ATTACKS and ATTACKS[name] is not cls:
            raise InputError(f"attack name {name!r} is already registered to {ATTACKS[name].__name__}")
        ATTACKS[name] = cls
        return cls
    return register


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"pgd:eps=0.1,steps=20"`` -> ``("pgd", {"eps": 0.1, "steps": 20})``; a user's attack
    is ``"mypkg.attacks:make_attack:eps=0.1"`` -> ``("mypkg.attacks:make_attack", {"eps": 0.1})``."""
    name, _, rest = spec.partition(":")
    attribute, colon, after = rest.partition(":")
    if attribute and "=" not in attribute and name.strip().lower() not in ATTACKS and is_factory_spec(
            f"{name.strip()}:{attribute.strip()}"):
        return f"{name.strip()}:{attribute.strip()}", parse_spec(f"x:{after}")[1] if colon else {}
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise InputError(f"attack parameter {item!r} in {spec!r} is not key=value")
        params[key.strip()] = _parse_value(value.strip())
    return name.strip().lower(), params


def _parse_value(value: str) -> Any:
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    if "/" in value:
        num, _, den = value.partition("/")
        try:
            return float(num) / float(den)
        except ValueError:
            pass
        except ZeroDivisionError:
            raise InputError(f"attack parameter value {value!r} divides by zero") from None
    return value


def make_attack(name: str, model: Callable[[torch.Tensor], torch.Tensor], **params: Any) -> Attack:
    """Build a registered attack, or a user's by ``module:factory`` (called with the model and
    the parameters); unknown names and parameters give a clear error."""
    if is_factory_spec(name):
        attack = call_factory_exactly(load_factory(name), model, **params)
        if not callable(attack):
            raise InputError(f"{name} returned a {type(attack).__name__}, not an attack")
        return attack
    key = name.lower()
    if key not in ATTACKS:
        raise InputError(f"unknown attack {name!r}; known attacks: {sorted(ATTACKS)}")
    cls = ATTACKS[key]
    sig = inspect.signature(cls.__init__).parameters
    accepted = {n for n, p in sig.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self", "model"}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.values())  # e.g. Transfer passes the rest on
    unknown = set() if takes_any else set(params) - accepted
    if unknown:
        raise InputError(f"attack {name!r} has no parameters {sorted(unknown)}; it takes {sorted(accepted)}")
    return cls(model, **params)
