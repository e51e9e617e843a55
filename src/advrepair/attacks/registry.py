"""Attacks by name, with parameters from strings like ``pgd:eps=0.1,steps=20``."""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

from advrepair.attacks.apgd import APGD, APGDCE, APGDDLR
from advrepair.attacks.apgd_t import APGDT
from advrepair.attacks.autoattack import AutoAttack
from advrepair.attacks.base import Attack
from advrepair.attacks.bim import BIM
from advrepair.attacks.cw import CW, CWPGD
from advrepair.attacks.difgsm import DIFGSM
from advrepair.attacks.fab import FAB, FABT
from advrepair.attacks.fgsm import FGSM
from advrepair.attacks.hopskipjump import HopSkipJump
from advrepair.attacks.mifgsm import MIFGSM
from advrepair.attacks.pgd import PGD
from advrepair.attacks.square import Square
from advrepair.attacks.ssp import SSP
from advrepair.attacks.tifgsm import TIFGSM
from advrepair.attacks.transfer import Transfer
from advrepair.errors import InputError

ATTACKS: dict[str, type[Attack]] = {
    "fgsm": FGSM, "pgd": PGD, "bim": BIM, "mifgsm": MIFGSM, "difgsm": DIFGSM, "tifgsm": TIFGSM,
    "cw": CW, "cw-pgd": CWPGD, "ssp": SSP, "apgd": APGD, "apgd-ce": APGDCE, "apgd-dlr": APGDDLR,
    "apgd-t": APGDT, "autoattack": AutoAttack, "square": Square, "fab": FAB, "fab-t": FABT,
    "hopskipjump": HopSkipJump, "transfer": Transfer,
}


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"pgd:eps=0.1,steps=20"`` -> ``("pgd", {"eps": 0.1, "steps": 20})``."""
    name, _, rest = spec.partition(":")
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
    """Build a registered attack; unknown names and parameters give a clear error."""
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
