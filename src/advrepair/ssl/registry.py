"""Self-supervised tasks by name: build a fresh one, or rebuild one from a saved head.

Every task keeps its trained module in ``task.head`` (ContrastiveHead, RotationHead,
InpaintingNet), which is what a checkpoint stores: ``save_checkpoint(task.head, stem,
ModelCard(kind=f"ssl-{name}", arch=task.head.arch, config=task.head.config, parent={"task":
task.config(), ...}))``. ``load_checkpoint`` rebuilds the head from ``card.arch`` /
``card.config`` through ``models.registry`` (each head module registers its architecture
when imported; importing this module imports all three), and
``task_from_checkpoint_parts(name, head, card.parent["task"])`` wraps it into its task.

Example:
    >>> task = build_task("rotation", classifier)                 # untrained
    >>> train_ssl_task(task, classifier, data, SSLRecipe())
    >>> again = task_from_checkpoint_parts("rotation", task.head, task.config())
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from advrepair.errors import CheckpointError, InputError
from advrepair.models.base import Classifier
from advrepair.ssl.augment import AugmentConfig
from advrepair.ssl.contrastive import ContrastiveHead, ContrastiveTask
from advrepair.ssl.inpainting import InpaintingNet, InpaintingTask
from advrepair.ssl.rotation import RotationHead, RotationTask
from advrepair.ssl.task import SelfSupervisedTask

TASK_NAMES: tuple[str, ...] = ("contrastive", "rotation", "inpainting")

#: architecture name (as on a model card) -> the head's constructor
head_arch_builders: dict[str, Callable[..., nn.Module]] = {
    ContrastiveHead.arch: ContrastiveHead,
    RotationHead.arch: RotationHead,
    InpaintingNet.arch: InpaintingNet,
}

#: task name -> the architecture of its head
TASK_HEAD_ARCH: dict[str, str] = {
    "contrastive": ContrastiveHead.arch,
    "rotation": RotationHead.arch,
    "inpainting": InpaintingNet.arch,
}

_HEAD_TYPES: dict[str, type[nn.Module]] = {
    "contrastive": ContrastiveHead, "rotation": RotationHead, "inpainting": InpaintingNet,
}

# keys build_task accepts per task: (keys for the head, keys for the task)
_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "contrastive": (("hidden_dim", "out_dim"), ("tau", "n_views", "augment_cfg", "negatives", "negatives_seed")),
    "rotation": (("source", "width", "hidden_dim"), ()),
    "inpainting": (("width",), ("mask", "mask_frac", "rect_frac", "n_rects")),
}


def check_task_name(name: object) -> str:
    """``name`` if it is a known task name, else InputError listing the valid names."""
    if not isinstance(name, str) or name not in TASK_NAMES:
        raise InputError(f"unknown self-supervised task {name!r}; expected one of {list(TASK_NAMES)}")
    return name


def _split_cfg(name: str, cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    head_keys, task_keys = _KEYS[name]
    unknown = sorted(set(cfg) - set(head_keys) - set(task_keys))
    if unknown:
        raise InputError(f"the {name} task does not take {unknown}; it accepts {sorted(head_keys + task_keys)}")
    return ({k: v for k, v in cfg.items() if k in head_keys}, {k: v for k, v in cfg.items() if k in task_keys})


def build_task(name: str, classifier: Classifier, **cfg: Any) -> SelfSupervisedTask:
    """A fresh, untrained task whose head fits ``classifier`` (its feature size or its images).

    Args:
        name: one of ``TASK_NAMES``.
        classifier: the frozen classifier (``feature_dim``, ``in_channels``, ``input_size``).
        cfg: head and task options.
            contrastive: ``negatives`` (M, C, H, W) required; hidden_dim, out_dim, tau,
                n_views, augment_cfg, negatives_seed.
            rotation: source ("image" | "features"), width, hidden_dim.
            inpainting: width, mask ("center" | "random"), mask_frac, rect_frac, n_rects.

    Raises:
        InputError: unknown name, unknown option, or a missing contrastive negative bank.

    Example:
        >>> build_task("inpainting", classifier, mask="random", width=8)
    """
    name = check_task_name(name)
    head_cfg, task_cfg = _split_cfg(name, cfg)
    if name == "contrastive":
        negatives = task_cfg.get("negatives")
        if not isinstance(negatives, torch.Tensor) or negatives.dim() != 4 or negatives.shape[0] == 0:
            raise InputError("the contrastive task needs negatives=(M, C, H, W) clean images (its negative bank)")
        return ContrastiveTask(ContrastiveHead(classifier.feature_dim, **head_cfg), **task_cfg)
    if name == "rotation":
        source = head_cfg.pop("source", "image")
        dims = (dict(in_dim=classifier.feature_dim) if source == "features"
                else dict(in_channels=classifier.in_channels))
        return RotationTask(RotationHead(source, **dims, **head_cfg))  # validates source
    net = InpaintingNet(in_channels=classifier.in_channels, input_size=classifier.input_size, **head_cfg)
    return InpaintingTask(net, **task_cfg)


def task_from_checkpoint_parts(name: str, head_module: nn.Module, task_config: dict[str, Any],
                               *, negatives: torch.Tensor | None = None) -> SelfSupervisedTask:
    """Wrap a loaded head into its task, in eval mode.

    Args:
        name: the task name (one of ``TASK_NAMES``).
        head_module: the module ``load_checkpoint`` rebuilt.
        task_config: what ``task.config()`` returned when it was saved (the card's
            ``parent["task"]``); missing keys take the defaults.
        negatives: (M, C, H, W) negative bank, required for "contrastive" (never saved).

    Raises:
        InputError: unknown name, or no negatives for a contrastive task.
        CheckpointError: the head is not the kind the task needs.
    """
    name = check_task_name(name)
    if not isinstance(head_module, _HEAD_TYPES[name]):
        raise CheckpointError(f"a {name} task needs a {_HEAD_TYPES[name].__name__}, "
                              f"the checkpoint holds a {type(head_module).__name__}")
    cfg = dict(task_config or {})
    if name == "contrastive":
        if negatives is None:
            raise InputError("rebuilding a contrastive task needs negatives=(M, C, H, W) clean images")
        assert isinstance(head_module, ContrastiveHead)  # checked against _HEAD_TYPES above
        task: SelfSupervisedTask = ContrastiveTask(
            head_module, tau=cfg.get("tau", 0.2), n_views=cfg.get("n_views", 4),
            augment_cfg=AugmentConfig.from_dict(cfg.get("augment", {})), negatives=negatives)
    elif name == "rotation":
        assert isinstance(head_module, RotationHead)
        task = RotationTask(head_module)
    else:
        assert isinstance(head_module, InpaintingNet)
        task = InpaintingTask(head_module, mask=cfg.get("mask", "center"),
                              mask_frac=cfg.get("mask_frac", 0.5),
                              rect_frac=tuple(cfg.get("rect_frac", (0.2, 0.35))),
                              n_rects=cfg.get("n_rects", 2))
    return task.eval()
