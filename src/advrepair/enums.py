"""Names users pass around: datasets and threat models (RobustBench style)."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from advrepair.errors import InputError
from advrepair.validation import check_positive


class Norm(str, Enum):
    """The norm of a perturbation budget."""

    LINF = "Linf"
    L2 = "L2"

    @classmethod
    def parse(cls, value: "str | Norm") -> "Norm":
        if isinstance(value, Norm):
            return value
        key = str(value).strip().lower().replace("_", "")
        for member in cls:
            if member.value.lower() == key or member.name.lower() == key:
                return member
        raise InputError(f"unknown norm {value!r}; expected one of {[m.value for m in cls]}")


class DatasetName(str, Enum):
    """Datasets advrepair can read."""

    FASHION_MNIST = "fashion-mnist"
    CIFAR10 = "cifar10"
    CIFAR100 = "cifar100"
    SVHN = "svhn"
    FOLDER = "folder"

    @classmethod
    def parse(cls, value: "str | DatasetName") -> "DatasetName":
        if isinstance(value, DatasetName):
            return value
        key = str(value).strip().lower().replace("_", "-")
        aliases = {"fmnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
                   "cifar-10": "cifar10", "cifar-100": "cifar100"}
        key = aliases.get(key, key)
        for member in cls:
            if member.value == key:
                return member
        raise InputError(f"unknown dataset {value!r}; expected one of {[m.value for m in cls]}")


@dataclass(frozen=True)
class ThreatModel:
    """A perturbation budget: ``||x_adv - x||_norm <= eps`` and ``x_adv`` in [0, 1]."""

    norm: Norm
    eps: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", Norm.parse(self.norm))
        check_positive(self.eps, "eps", allow_zero=True)
