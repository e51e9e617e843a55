"""What a wrapped model does not say about itself, inferred: channels, input size, classes, features."""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from advrepair.errors import InputError
from advrepair.models.adapters.constants import Size
from advrepair.models.adapters.wrappers import WrappedClassifier


def _as_floats(values: Any, what: str) -> list[float]:
    if isinstance(values, torch.Tensor):
        values = values.detach().flatten().tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise InputError(f"{what} must be a sequence of numbers (one per channel), got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InputError(f"{what} must hold finite numbers, got {list(values)!r}")
        out.append(float(v))
    if not out:
        raise InputError(f"{what} is empty; give one value per input channel")
    return out


def _infer_in_channels(module: nn.Module) -> int | None:
    declared = getattr(module, "in_channels", None)
    if isinstance(declared, int) and not isinstance(declared, bool):
        return declared
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


def _parse_size(size: Any) -> Size | None:
    """int, (H, W) or a timm-style (C, H, W) -> int when square, (H, W) otherwise."""
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        hw = (size, size)
    elif isinstance(size, (tuple, list)) and len(size) in (2, 3) and all(
            isinstance(s, int) and not isinstance(s, bool) for s in size):
        hw = (int(size[-2]), int(size[-1]))
    else:
        raise InputError(f"input_size must be an int or (H, W), got {size!r}")
    if min(hw) < 1:
        raise InputError(f"input_size must be positive, got {size!r}")
    return hw[0] if hw[0] == hw[1] else hw


def _declared_input_size(module: nn.Module) -> Size | None:
    declared = getattr(module, "input_size", None)
    if declared is not None:
        try:
            return _parse_size(declared)
        except InputError:
            return None
    cfg = _timm_cfg(module)
    return _parse_size(cfg["input_size"]) if "input_size" in cfg else None


def _timm_cfg(module: nn.Module) -> dict[str, Any]:
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(module, attr, None)
        if isinstance(cfg, dict) and cfg:
            return cfg
    return {}


def _module_place(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def _dry_run(model: WrappedClassifier, sides: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, tuple[int, int]]:
    """Logits of two seeded random images at the first side the model accepts."""
    device, dtype = _module_place(model.net)
    errors = []
    for h, w in sides:
        x = torch.rand(2, model.in_channels, h, w, generator=torch.Generator().manual_seed(0)).to(device, dtype)
        try:
            with torch.no_grad():
                out = model(x)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            errors.append(f"{h}x{w}: {exc}")
            continue
        return out, (h, w)
    tried = "; ".join(errors)
    raise InputError(f"a dry run of the model on {model.in_channels}-channel images failed ({tried}); "
                     "check in_channels and pass input_size")
