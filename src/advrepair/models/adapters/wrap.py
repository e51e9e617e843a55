"""``wrap_model``: any nn.Module on normalized images -> our model contract."""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
from torch import nn

from advrepair.errors import InputError
from advrepair.validation import check_int_at_least, looks_like_probabilities
from advrepair.models.adapters.constants import _PROBE_SIDES, Size
from advrepair.models.adapters.inference import (_as_floats, _declared_input_size, _dry_run, _infer_in_channels,
                                                 _module_place, _parse_size)
from advrepair.models.adapters.wrappers import WrappedClassifier, WrappedFeatureClassifier


def wrap_model(module: nn.Module, mean: Sequence[float], std: Sequence[float], *, num_classes: int | None = None,
               input_size: Size | None = None, in_channels: int | None = None, feature_layer: str | None = None,
               feature_from: str = "output", source: str = "") -> WrappedClassifier:
    """Put ``module`` (normalized images -> logits) behind our contract.

    Args:
        module: maps images normalized as ``(x - mean) / std`` to logits (B, K).
        mean, std: one value per input channel (the normalization the module was trained with).
        num_classes: K; inferred from a dry run if None, checked against it otherwise.
        input_size: side (or (H, W)) of the images the module takes; if None, the
            module's ``input_size`` attribute or timm config is used, else it stays None.
        in_channels: C; if None: the module's ``in_channels`` attribute, its first
            ``Conv2d``'s, or ``len(mean)``.
        feature_layer: a name from ``dict(module.named_modules())``; when given, the
            result has ``features(x)`` (that layer's output, flattened) and ``feature_dim``.
        feature_from: ``"output"`` (default) or ``"input"`` of ``feature_layer``.
        source: free text recorded in ``config`` (e.g. ``"timm:resnet18"``).

    Returns:
        a :class:`WrappedClassifier` (a :class:`WrappedFeatureClassifier` with a feature
        layer) sharing ``module``'s parameters, on its device, with the module's train/eval
        mode left as it was.

    Raises:
        InputError: mean/std not matching the channels, std <= 0, an unknown feature
            layer, a dry run that fails, outputs that are not (B, K) logits, or a
            ``num_classes`` that disagrees with them.

    Shapes: (B, C, H, W) in [0, 1] -> (B, K); ``features``: -> (B, feature_dim).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Linear(8, 10))
        >>> model = wrap_model(net, IMAGENET_MEAN, IMAGENET_STD, feature_layer="3")
        >>> model.num_classes, model.feature_dim
        (10, 8)
    """
    if not isinstance(module, nn.Module):
        raise InputError(f"wrap_model needs an nn.Module, got {type(module).__name__}")
    mean_l, std_l = _as_floats(mean, "mean"), _as_floats(std, "std")
    if any(s <= 0 for s in std_l):
        raise InputError(f"std must be > 0 in every channel, got {std_l}")
    if in_channels is None:
        in_channels = _infer_in_channels(module) or len(mean_l)
    in_channels = check_int_at_least(in_channels, "in_channels", 1)
    if len(mean_l) != in_channels or len(std_l) != in_channels:
        raise InputError(f"mean and std need one value per input channel ({in_channels}), "
                         f"got {len(mean_l)} and {len(std_l)}")
    if feature_from not in ("output", "input"):
        raise InputError(f"feature_from must be 'output' or 'input', got {feature_from!r}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise InputError(f"num_classes must be a positive integer, got {num_classes!r}")
    size = _parse_size(input_size) if input_size is not None else _declared_input_size(module)

    common: dict[str, Any] = dict(num_classes=num_classes or 0, in_channels=in_channels, input_size=size,
                                  source=source)
    wrapped: WrappedClassifier
    if feature_layer is not None:
        wrapped = WrappedFeatureClassifier(module, mean_l, std_l, feature_layer=feature_layer,
                                           feature_from=feature_from, **common)
    else:
        wrapped = WrappedClassifier(module, mean_l, std_l, **common)
    device, _ = _module_place(module)
    wrapped.normalize.to(device)

    was_training = module.training
    module.eval()
    try:
        sides = [size if isinstance(size, tuple) else (size, size)] if size is not None else \
            [(s, s) for s in _PROBE_SIDES]
        out, side = _dry_run(wrapped, sides)
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(f"the module must return logits of shape (B, classes), got {got}")
        if num_classes is not None and out.shape[1] != num_classes:
            raise InputError(f"num_classes={num_classes} but the module returns {out.shape[1]} logits")
        wrapped.num_classes = int(out.shape[1])
        wrapped.config["num_classes"] = wrapped.num_classes
        if not torch.isfinite(out).all():
            warnings.warn("the module returned NaN or infinite logits on random images", stacklevel=2)
        elif looks_like_probabilities(out):
            warnings.warn("the module's outputs look like probabilities (rows in [0, 1] summing to 1); "
                          "attacks expect logits: drop the final softmax", stacklevel=2)
        if isinstance(wrapped, WrappedFeatureClassifier):
            x = torch.rand(2, in_channels, *side, generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                wrapped.feature_dim = int(wrapped.features(x.to(*_module_place(module))).shape[1])
            wrapped.config["feature_dim"] = wrapped.feature_dim
    finally:
        wrapped.train(was_training)
    return wrapped
