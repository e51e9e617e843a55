"""The wrapper modules: normalization inside, logits out, ``features(x)`` read from a named layer."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from advrepair.errors import InputError
from advrepair.models.adapters.constants import Size
from advrepair.models.base import Normalize


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
