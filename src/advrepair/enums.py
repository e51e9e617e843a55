"""Names users pass around: datasets and threat models (RobustBench style)."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable, TypeVar

from advrepair.errors import InputError
from advrepair.validation import check_positive


class Norm(str, Enum):
    """The norm of a perturbation budget."""

    LINF = "Linf"
    L2 = "L2"

    @classmethod
    def parse(cls, value: "str | Norm") -> "Norm":
        return _parse(cls, value, "norm", value_key=lambda v: v.lower().replace("_", ""), by_name=True)


class DatasetName(str, Enum):
    """Datasets advrepair can read."""

    FASHION_MNIST = "fashion-mnist"
    CIFAR10 = "cifar10"
    CIFAR100 = "cifar100"
    SVHN = "svhn"
    FOLDER = "folder"

    @classmethod
    def parse(cls, value: "str | DatasetName") -> "DatasetName":
        aliases = {"fmnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
                   "cifar-10": "cifar10", "cifar-100": "cifar100"}
        return _parse(cls, value, "dataset", value_key=lambda v: aliases.get(v.lower().replace("_", "-"),
                                                                  v.lower().replace("_", "-")))


E = TypeVar("E", bound=Enum)


def _parse(cls: type[E], value: "str | E", what: str, value_key: Callable[[str], str], by_name: bool = False) -> E:
    """The member of ``cls`` that ``value`` names (case-insensitive), or a clear InputError."""
    if isinstance(value, cls):
        return value
    key = value_key(str(value).strip())
    for member in cls:
        if value_key(str(member.value)) == key or (by_name and member.name.lower() == key):
            return member
    raise InputError(f"unknown {what} {value!r}; expected one of {[m.value for m in cls]}")


@dataclass(frozen=True)
class ThreatModel:
    """A perturbation budget: ``||x_adv - x||_norm <= eps`` and ``x_adv`` in [0, 1]."""

    norm: Norm
    eps: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", Norm.parse(self.norm))
        check_positive(self.eps, "eps", allow_zero=True)
