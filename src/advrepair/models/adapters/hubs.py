"""timm and RobustBench models (imported lazily; neither is a dependency)."""
from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from advrepair.errors import InputError
from advrepair.models.adapters.constants import IMAGENET_MEAN, IMAGENET_STD, ROBUSTBENCH_DATASETS, ROBUSTBENCH_THREAT_MODELS
from advrepair.models.adapters.inference import _parse_size, _timm_cfg
from advrepair.models.adapters.wrap import wrap_model
from advrepair.models.adapters.wrappers import WrappedClassifier


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
