"""Where and in what precision models run: device names, autocast, channels-last layout.

No paper is implemented here. Our choices:

- ``"auto"`` means CUDA when available, else the CPU (never MPS: several of our kernels
  are untested there; name ``"mps"`` explicitly to use it).
- Precision ``"fp32"`` *disables* autocast (so it also switches off an enclosing autocast
  region); ``"bf16"`` runs autocast with bfloat16 on the CPU or CUDA; ``"fp16"`` only on
  CUDA (CPU float16 autocast is slow and poorly covered; refused with InputError).
- Autocast changes only the arithmetic inside the model: images and perturbations stay
  float32, and :class:`AutocastModule` returns float32 logits, so attack budgets, losses
  and projections are computed exactly as in fp32. Gradients w.r.t. the images still
  flow through the reduced-precision layers (a bf16 gradient is coarser; with sign steps
  that rarely matters, but it is not bit-identical to fp32).
- ``channels_last`` changes the memory layout of 4-D parameters and buffers only, never
  values: outputs agree with the default layout up to float summation order (logits within
  1e-5, the same predictions: tests/test_fast_paths.py). It is the default for modules with
  convolutions (``channels_last=None``): on this project's CPU it makes the SmallCNN's
  forward and backward ~2.3x faster (bench/reverse_attack_throughput.py). Training keeps the
  default layout, so the zoo's recipes stay bit-identical to their cards.
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Union

import torch
from torch import nn

from advrepair.errors import InputError

PRECISIONS = ("fp32", "bf16", "fp16")
_PRECISION_ALIASES = {"fp32": "fp32", "float32": "fp32", "float": "fp32", "32": "fp32",
                      "bf16": "bf16", "bfloat16": "bf16",
                      "fp16": "fp16", "float16": "fp16", "half": "fp16", "16": "fp16"}
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

DeviceLike = Union[str, torch.device]


def resolve_device(name: DeviceLike = "auto") -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:1"``,
    ``"mps"`` -> that device after checking it exists.

    Raises:
        InputError: an unknown name, or a device this machine does not have.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(name, torch.device):
        device = name
    else:
        if not isinstance(name, str):
            raise InputError(f"device must be a string like 'auto', 'cpu' or 'cuda:0', got {name!r}")
        key = name.strip().lower()
        if key == "auto":
            return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        try:
            device = torch.device(key)
        except (RuntimeError, ValueError) as exc:
            raise InputError(f"unknown device {name!r}; expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r} was asked for but CUDA is not available here; use 'cpu' or 'auto'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} "
                             "CUDA device(s)")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError(f"device {name!r} was asked for but MPS is not available here")
    elif device.type != "cpu":
        raise InputError(f"unsupported device {name!r}; expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return device


def parse_precision(precision: str) -> str:
    """The canonical name (``"fp32"``, ``"bf16"`` or ``"fp16"``) of a precision or its alias.

    Raises:
        InputError: anything else.

    Example:
        >>> parse_precision("bfloat16")
        'bf16'
    """
    key = precision.strip().lower() if isinstance(precision, str) else None
    if key not in _PRECISION_ALIASES:
        raise InputError(f"unknown precision {precision!r}; expected one of {list(PRECISIONS)}")
    return _PRECISION_ALIASES[key]


def autocast_context(device: DeviceLike, precision: str = "fp32") -> ContextManager[None]:
    """A context in which the model's forward pass runs at ``precision``.

    Args:
        device: where the model runs (a name for :func:`resolve_device`, or a torch.device).
        precision: ``"fp32"`` (autocast off), ``"bf16"`` (CPU or CUDA) or ``"fp16"`` (CUDA only).

    Raises:
        InputError: an unknown precision; fp16 off CUDA; bf16 on a GPU without bf16; any
            reduced precision on a device other than the CPU or CUDA.

    Example:
        >>> with autocast_context("cpu", "bf16"):
        ...     logits = model(images)          # bf16 inside; call .float() on the result
    """
    p = parse_precision(precision)
    dev = resolve_device(device)
    if p == "fp32":
        if dev.type in ("cpu", "cuda"):
            return torch.autocast(device_type=dev.type, enabled=False)
        return contextlib.nullcontext()
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"precision {p!r} is supported on 'cpu' (bf16) and 'cuda', not on {dev.type!r}")
    if p == "fp16" and dev.type != "cuda":
        raise InputError("precision 'fp16' needs a CUDA device; on the CPU use 'bf16' or 'fp32'")
    if p == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError("this GPU does not support bfloat16; use 'fp16' or 'fp32'")
    return torch.autocast(device_type=dev.type, dtype=_DTYPES[p])


class AutocastModule(nn.Module):
    """``module`` run under :func:`autocast_context`, returning float32 outputs.

    So ``make_attack("pgd", AutocastModule(model, "cuda", "bf16"), ...)`` attacks the model
    in reduced precision while budgets, losses and projections stay float32.

    Shapes: whatever ``module`` maps; floating outputs come back as float32.

    Example:
        >>> fast = AutocastModule(model, "cpu", "bf16")
        >>> fast(images).dtype
        torch.float32
    """

    def __init__(self, module: nn.Module, device: DeviceLike, precision: str = "fp32") -> None:
        super().__init__()
        self.module = module
        self.device = resolve_device(device)
        self.precision = parse_precision(precision)
        autocast_context(self.device, self.precision)  # refuse bad combinations now, not mid-run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast_context(self.device, self.precision):
            out = self.module(x)
        return out.float() if isinstance(out, torch.Tensor) and out.is_floating_point() else out

    def __getattr__(self, name: str) -> Any:  # num_classes, features, ... of the wrapped model
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)


def _check_module(module: object, what: str) -> None:
    if not isinstance(module, nn.Module):
        raise InputError(f"{what} needs an nn.Module, got {type(module).__name__}")


def has_convolutions(module: nn.Module) -> bool:
    """Whether ``module`` holds a 4-D parameter (a 2-D convolution's weight)."""
    _check_module(module, "has_convolutions")
    return any(p.dim() == 4 for p in module.parameters())


def layout_of(module: nn.Module) -> str | None:
    """``"channels_last"`` or ``"contiguous"``: how ``module``'s 4-D parameters are stored
    (``None`` without any). Evaluations record it beside their results."""
    _check_module(module, "layout_of")
    weights = [p for p in module.parameters() if p.dim() == 4]
    if not weights:
        return None
    last = all(p.is_contiguous(memory_format=torch.channels_last) for p in weights) and \
        not all(p.is_contiguous() for p in weights)
    return "channels_last" if last else "contiguous"


def prepare_module(module: nn.Module, device: DeviceLike, channels_last: bool | None = None) -> nn.Module:
    """Move ``module`` to ``device`` (in place, like ``Module.to``) and, with
    ``channels_last``, store its 4-D parameters and buffers in channels-last layout.
    ``None`` (the default) chooses channels-last exactly when the module has convolutions.

    Returns the same module, for chaining.

    Example:
        >>> model = prepare_module(model, "auto", channels_last=True).eval()
    """
    _check_module(module, "prepare_module")
    dev = resolve_device(device)
    module.to(dev)
    if channels_last is None:
        channels_last = has_convolutions(module)
    if channels_last:
        module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # accepted at run time; the stubs omit it
    return module


def prepare_images(images: torch.Tensor, device: DeviceLike, channels_last: bool = False) -> torch.Tensor:
    """``images`` (B, C, H, W) on ``device``, in channels-last layout if asked (same values).

    Example:
        >>> x = prepare_images(torch.rand(2, 3, 8, 8), "cpu", channels_last=True)
        >>> x.is_contiguous(memory_format=torch.channels_last)
        True
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"images must be a 4-D NCHW tensor, got {shape}")
    out = images.to(resolve_device(device))
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out
