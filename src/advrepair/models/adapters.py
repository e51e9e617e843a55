"""Adapters: any image classifier -> our model contract (images in [0, 1], logits out).

Our attacks, defenses and SSL heads expect a model that takes float NCHW images in
[0, 1], normalizes them itself and returns logits, and (for the reverse attack's heads)
offers ``features(x)`` and the attributes ``num_classes``, ``input_size``,
``in_channels`` and ``feature_dim``. :func:`wrap_model` puts any ``nn.Module`` that maps
*normalized* images to logits into that shape; :func:`from_timm` and
:func:`from_robustbench` do it for models of those two libraries, which are imported
lazily (neither is a dependency of advrepair).

No paper is implemented here. Conventions we chose:

- ``features(x)`` reads one named submodule with a hook and flattens it to (B, D). If
  that submodule runs several times in one forward pass, its *first* call is read and
  the rest of the forward pass is skipped (a feature read costs only the layers up to it).
- Attributes the caller does not give are inferred by one dry run in eval mode, without
  gradient, on two seeded random images: ``num_classes`` from the logits' width,
  ``feature_dim`` from the feature width. ``input_size`` is never guessed: it is the
  given value, the module's own ``input_size`` attribute, or the ``input_size`` of a timm
  config; otherwise it stays ``None`` (the dry run then tries 32x32, then 224x224 images).
- A module whose dry-run outputs look like probabilities (rows in [0, 1] summing to 1)
  is accepted with a warning, as the attacks do (``attacks/base.py``): attacks want logits.
- The wrapped module should be float32; reduced precision belongs to
  :mod:`advrepair.runtime` (autocast), not to the weights.
"""
from __future__ import annotations

import importlib
import math
import warnings
from typing import Any, Sequence, Union

import torch
from torch import nn

from advrepair.validation import looks_like_probabilities
from advrepair.errors import InputError
from advrepair.models.base import Normalize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: RobustBench datasets: (number of classes, side of the images its models take)
ROBUSTBENCH_DATASETS: dict[str, tuple[int, int]] = {"cifar10": (10, 32), "cifar100": (100, 32),
                                                    "imagenet": (1000, 224)}
ROBUSTBENCH_THREAT_MODELS = ("Linf", "L2", "corruptions", "corruptions_3d")

#: sides tried by the dry run when the input size is unknown
_PROBE_SIDES = (32, 224)

Size = Union[int, tuple[int, int]]


class _StopForward(Exception):
    """Raised by the feature hook once the layer has run, to skip the rest of the network."""


class WrappedClassifier(nn.Module):
    """A foreign classifier behind our contract: ``net(normalize(x))`` -> logits.

    Built by :func:`wrap_model`; see there for the arguments.

    Shapes: (B, C, H, W) float in [0, 1] -> logits (B, num_classes).

    Attributes:
        net: the wrapped module (maps normalized images to logits).
        normalize: :class:`~advrepair.models.base.Normalize` with the given mean and std.
        num_classes, in_channels: ints; input_size: int (square), (H, W) or None;
        feature_dim: None here (no feature layer).
        arch, config: a name and the arguments that describe the model, for model cards.
    """

    arch = "wrapped"

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], *, num_classes: int,
                 in_channels: int, input_size: Size | None, source: str = "") -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.input_size = input_size
        self.feature_dim: int | None = None
        self.source = source
        self.config: dict[str, Any] = dict(
            source=source, mean=list(mean), std=list(std), num_classes=self.num_classes,
            in_channels=self.in_channels, input_size=list(input_size) if isinstance(input_size, tuple) else input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


class WrappedFeatureClassifier(WrappedClassifier):
    """:class:`WrappedClassifier` with ``features(x)``: one named submodule, read by a hook.

    ``feature_from="output"`` reads what the submodule returns, ``"input"`` what it is
    given (the input of a classification head is the penultimate representation).

    Shapes: ``features``: (B, C, H, W) in [0, 1] -> (B, feature_dim), differentiable in x.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], *, num_classes: int,
                 in_channels: int, input_size: Size | None, feature_layer: str, feature_from: str = "output",
                 source: str = "") -> None:
        super().__init__(net, mean, std, num_classes=num_classes, in_channels=in_channels,
                         input_size=input_size, source=source)
        self.feature_layer = feature_layer
        self.feature_from = feature_from
        _find_layer(net, feature_layer)  # fail now on an unknown name (not stored: no duplicate weights)
        self.config.update(feature_layer=feature_layer, feature_from=feature_from)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []

        def keep(value: Any) -> None:
            if isinstance(value, (tuple, list)):
                value = value[0]
            if not isinstance(value, torch.Tensor):
                raise InputError(f"layer {self.feature_layer!r} produced a {type(value).__name__}, not a tensor")
            captured.append(value)
            raise _StopForward

        layer = self.net.get_submodule(self.feature_layer)
        if self.feature_from == "input":
            handle = layer.register_forward_pre_hook(lambda _m, args: keep(args))
        else:
            handle = layer.register_forward_hook(lambda _m, _args, out: keep(out))
        try:
            self.net(self.normalize(x))
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise InputError(f"layer {self.feature_layer!r} did not run in the model's forward pass")
        return captured[0].flatten(1)


def _find_layer(net: nn.Module, name: str) -> nn.Module:
    modules = dict(net.named_modules())
    if not isinstance(name, str) or not name or name not in modules:
        sample = [n for n in modules if n][:15]
        raise InputError(f"the model has no submodule {name!r}; some of its submodules: {sample}")
    return modules[name]


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
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise InputError(f"in_channels must be a positive integer, got {in_channels!r}")
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


def _import(name: str, install_hint: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise InputError(f"{name} cannot be imported ({exc}); {install_hint}") from exc


def from_timm(name: str, *, pretrained: bool = False, num_classes: int | None = None,
              feature_layer: str | None = None, **kwargs: Any) -> WrappedClassifier:
    """A timm model behind our contract, with its own normalization inside.

    ``timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)``,
    then :func:`wrap_model` with the mean, std and input size of the model's
    ``pretrained_cfg`` (older timm: ``default_cfg``); ImageNet's mean/std if it has none.
    ``pretrained=True`` downloads weights, which needs internet (never done in our tests).
    Images must already have the model's input size (no resize or crop happens here).

    Features: ``feature_layer`` if given (that submodule's output); otherwise the *input*
    of the classification head (``model.get_classifier()``), i.e. the pooled
    penultimate representation, when the model has one.

    Deviation (timm has no rule for it): with ``in_chans`` different from the config's
    channel count, the mean/std are averaged over the config's channels and repeated.

    Raises:
        InputError: timm missing ("pip install timm"), or anything :func:`wrap_model` rejects.

    Example:
        >>> model = from_timm("resnet18", num_classes=10)                  # doctest: +SKIP
        >>> adv = make_attack("pgd", model, eps=4/255)(images, labels)     # doctest: +SKIP
    """
    timm = _import("timm", "install it with `pip install timm` to use timm models")
    create_kwargs = dict(kwargs)
    if num_classes is not None:
        create_kwargs["num_classes"] = num_classes
    model = timm.create_model(name, pretrained=pretrained, **create_kwargs)
    cfg = _timm_cfg(model)
    mean = list(cfg.get("mean") or IMAGENET_MEAN)
    std = list(cfg.get("std") or IMAGENET_STD)
    cfg_size = kwargs.get("img_size") or cfg.get("input_size")
    channels = int(kwargs.get("in_chans") or (cfg_size[0] if isinstance(cfg_size, (tuple, list)) and len(cfg_size) == 3
                                              else len(mean)))
    if len(mean) != channels:
        mean = [sum(mean) / len(mean)] * channels
    if len(std) != channels:
        std = [sum(std) / len(std)] * channels
    feature_from = "output"
    if feature_layer is None and callable(getattr(model, "get_classifier", None)):
        head = model.get_classifier()
        if isinstance(head, nn.Module) and not isinstance(head, nn.Identity):
            feature_layer = next((n for n, m in model.named_modules() if m is head and n), None)
            feature_from = "input"
    wrapped = wrap_model(model, mean, std, num_classes=num_classes, in_channels=channels,
                         input_size=_parse_size(cfg_size) if cfg_size is not None else None,
                         feature_layer=feature_layer, feature_from=feature_from, source=f"timm:{name}")
    wrapped.arch = "timm"
    wrapped.config.update(name=name, create_kwargs={k: v for k, v in kwargs.items()
                                                    if isinstance(v, (int, float, str, bool, type(None)))})
    return wrapped


def timm_architecture(name: str, num_classes: int | None = None, feature_layer: str | None = None,
                      create_kwargs: dict[str, Any] | None = None, **_recorded: Any) -> WrappedClassifier:
    """Rebuild a :func:`from_timm` model (random weights) from its ``config``, for
    ``register_architecture("timm", timm_architecture)`` so ``load_checkpoint`` can read
    a saved timm model. Recorded-only keys (mean, std, ...) are re-derived, not trusted.

    Example:
        >>> register_architecture("timm", timm_architecture)           # doctest: +SKIP
        >>> model, card = load_checkpoint("models/resnet18-cifar")      # doctest: +SKIP
    """
    layer = feature_layer if _recorded.get("feature_from", "output") == "output" else None
    return from_timm(name, pretrained=False, num_classes=num_classes, feature_layer=layer,
                     **(create_kwargs or {}))


def from_robustbench(model_name: str, *, dataset: str = "cifar10", threat_model: str = "Linf",
                     model_dir: str = "models", feature_layer: str | None = None) -> WrappedClassifier:
    """A RobustBench model behind our contract.

    Calls ``robustbench.utils.load_model(model_name=..., dataset=..., threat_model=...,
    model_dir=...)``, which downloads the weights into ``model_dir`` the first time: that
    needs internet (never done in our tests). RobustBench models take [0, 1] images and
    normalize inside, so the wrapper's normalization is the identity (mean 0, std 1).

    Args:
        model_name: a RobustBench leaderboard name, e.g. ``"Carmon2019Unlabeled"``.
        dataset: ``"cifar10"``, ``"cifar100"`` or ``"imagenet"`` (sets the expected
            number of classes and the input size: 32 or 224).
        threat_model: ``"Linf"``, ``"L2"``, ``"corruptions"`` or ``"corruptions_3d"``.
        feature_layer: optional submodule name for ``features(x)``.

    Raises:
        InputError: robustbench missing or not importable, an unknown dataset or threat
            model, or a loaded model that does not fit the dataset.

    Example:
        >>> model = from_robustbench("Standard", dataset="cifar10")  # doctest: +SKIP
    """
    key = str(dataset).lower().replace("-", "")
    if key not in ROBUSTBENCH_DATASETS:
        raise InputError(f"unknown RobustBench dataset {dataset!r}; expected one of {sorted(ROBUSTBENCH_DATASETS)}")
    threat = next((t for t in ROBUSTBENCH_THREAT_MODELS if t.lower() == str(threat_model).lower()), None)
    if threat is None:
        raise InputError(f"unknown RobustBench threat model {threat_model!r}; expected one of "
                         f"{list(ROBUSTBENCH_THREAT_MODELS)}")
    utils = _import("robustbench.utils",
                    "install it with `pip install git+https://github.com/RobustBench/robustbench.git` "
                    "(it also needs torchvision)")
    model = utils.load_model(model_name=model_name, dataset=key, threat_model=threat, model_dir=model_dir)
    classes, side = ROBUSTBENCH_DATASETS[key]
    wrapped = wrap_model(model, [0.0] * 3, [1.0] * 3, num_classes=classes, in_channels=3, input_size=side,
                         feature_layer=feature_layer, source=f"robustbench:{key}/{threat}/{model_name}")
    wrapped.arch = "robustbench"
    wrapped.config.update(model_name=model_name, dataset=key, threat_model=threat)
    return wrapped
