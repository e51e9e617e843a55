"""Normalization constants and the names third-party model hubs use."""
from __future__ import annotations

from typing import Union

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: RobustBench datasets: (number of classes, side of the images its models take)
ROBUSTBENCH_DATASETS: dict[str, tuple[int, int]] = {"cifar10": (10, 32), "cifar100": (100, 32),
                                                    "imagenet": (1000, 224)}
ROBUSTBENCH_THREAT_MODELS = ("Linf", "L2", "corruptions", "corruptions_3d")

#: sides tried by the dry run when the input size is unknown
_PROBE_SIDES = (32, 224)

Size = Union[int, tuple[int, int]]
