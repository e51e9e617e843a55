"""A small VGG-style classifier, the external model ``f_b`` of the adversarial transformation.

xiao2020 ("Resisting Adversarial Examples by Adversarial Examples", Sec. 3.4 and 4) uses
"a small VGG-style network" for ``f_b`` and asks that it be as simple as possible, since
every transformed image costs N forward/backward passes through it. The exact layers are
in the paper's Appendix A.1, which we do not have; this is our own VGG-style stack:

    [conv3x3(w) -> ReLU] x convs, maxpool 2    (stage 1)
    [conv3x3(2w) -> ReLU] x convs, maxpool 2   (stage 2)
    [conv3x3(4w) -> ReLU] x convs, maxpool 2   (stage 3, if stages = 3)
    flatten -> fc(feature_dim) -> ReLU -> fc(classes)

with optional BatchNorm after each convolution. It works for 28x28 (Fashion-MNIST) and
32x32 (CIFAR-10/SVHN) inputs; pooling floors odd sides (28 -> 14 -> 7 -> 3).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from advrepair.errors import InputError
from advrepair.models.base import Classifier
from advrepair.models.small_cnn import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from advrepair.validation import check_int_at_least


class SmallVGG(Classifier):
    """VGG-style stacks of 3x3 convolutions and max pooling, then two linear layers.

    Args:
        in_channels, num_classes, input_size: the image format (1 or 3 channels; 28 or 32).
        width: channels of the first stage; stage s has ``width * 2**s``.
        stages: number of conv-pool stages (1 to 4, and ``input_size // 2**stages >= 1``).
        convs_per_stage: 3x3 convolutions in each stage.
        feature_dim: size of the penultimate representation.
        batch_norm: BatchNorm after each convolution (off by default, so that a defense
            running it in eval mode never depends on running statistics).
        mean, std: per-channel normalization, applied inside the model.

    Shapes: (B, C, H, W) in [0, 1] -> logits (B, num_classes); features (B, feature_dim).

    Example:
        >>> f_b = SmallVGG(in_channels=1, num_classes=10, input_size=28, width=16)
        >>> f_b(torch.rand(8, 1, 28, 28)).shape
        torch.Size([8, 10])
    """

    arch = "small-vgg"

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int = 28,
                 width: int = 16, stages: int = 3, convs_per_stage: int = 2, feature_dim: int = 128,
                 batch_norm: bool = False,
                 mean: Sequence[float] = FASHION_MNIST_MEAN,
                 std: Sequence[float] = FASHION_MNIST_STD) -> None:
        for name, value, low in (("width", width, 1), ("stages", stages, 1), ("convs_per_stage", convs_per_stage, 1),
                                 ("feature_dim", feature_dim, 1), ("input_size", input_size, 1),
                                 ("num_classes", num_classes, 1), ("in_channels", in_channels, 1)):
            check_int_at_least(value, f"SmallVGG: {name}", low)
        if stages > 4 or input_size // 2**stages < 1:
            raise InputError(f"SmallVGG: {stages} pooling stages do not fit a {input_size}x{input_size} image "
                             "(need 1 <= stages <= 4 and input_size // 2**stages >= 1)")
        super().__init__(in_channels=in_channels, num_classes=num_classes, input_size=input_size,
                         mean=mean, std=std)
        self.config.update(width=width, stages=stages, convs_per_stage=convs_per_stage,
                           feature_dim=feature_dim, batch_norm=batch_norm)
        layers: list[nn.Module] = []
        channels = in_channels
        for s in range(stages):
            out = width * 2**s
            for _ in range(convs_per_stage):
                layers.append(nn.Conv2d(channels, out, 3, padding=1, bias=not batch_norm))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(out))
                layers.append(nn.ReLU())
                channels = out
            layers.append(nn.MaxPool2d(2))
        side = input_size // 2**stages
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * side * side, feature_dim), nn.ReLU())
        self.feature_dim = feature_dim
        self.head = nn.Linear(feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
