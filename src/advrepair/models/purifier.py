"""The NRP purifier P and its critic C (naseer2020, "A Self-supervised Approach for
Adversarial Robustness", Sec. 3.3).

Purifier P (the paper's "generator"): a convolution, then ``basic_blocks`` basic blocks of
``dense_blocks`` dense blocks; each dense block has ``dense_layers`` densely connected
convolutions (each sees the concatenation of the block input and every earlier layer's
output, leaky ReLU after all but the last, the last maps back to ``width`` channels),
then a tail of two convolutions back to image channels.

**No skip connection from the input image to the output.** The paper (Sec. 3.3): "adding
a skip connection from input to generator's output helps in restoration tasks ... However,
in our case an important design criteria is to avoid such skip connection since our
objective is to remove adversarial noise and a direct skip connection can potentially
reintroduce harmful noise patterns." Every path from input to output passes through the
first and the last convolution (tested by zeroing either).

Critic C (the paper's "discriminator", VGG-like): convolutional blocks of convolution,
batch norm and leaky ReLU (each block halves the resolution), then one linear layer giving
one logit per image.

Deviations from the paper, all on purpose:
- Size: the paper's P has 128x128x3 crops and ESRGAN-sized width; ours defaults to
  ``width=16, growth=8``, one basic block of 3 dense blocks, so it trains on a CPU on
  28x28 (Fashion-MNIST) and 32x32 (CIFAR/SVHN) images; all of it is configurable. P is
  fully convolutional and keeps the resolution (no down/up-sampling), so it takes any H, W.
- Inside the trunk we keep residual connections in *feature* space, scaled by 0.2
  (dense block: ``h + 0.2 * block(h)``; basic block likewise), as in the restoration
  networks the paper builds on; they never bypass the first or last convolution, so no
  image-space skip exists.
- Output: the paper does not say how P's output is kept in [0, 1]; we apply a sigmoid
  (default) or a clamp (``output="clamp"``) so every output is a valid image.
- Critic: the paper's 5 blocks are for 128x128 crops; default ``blocks=3`` here
  (28 -> 14 -> 7 -> 4, 32 -> 16 -> 8 -> 4), each block a stride-1 and a stride-2
  3x3 convolution, both with batch norm and leaky ReLU (0.2).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from advrepair.errors import InputError
from advrepair.models.registry import register_architecture
from advrepair.validation import check_int_at_least

_SLOPE = 0.2
_RESIDUAL_SCALE = 0.2
OUTPUTS = ("sigmoid", "clamp")


class DenseBlock(nn.Module):
    """``layers`` densely connected 3x3 convolutions with a scaled feature-space residual.

    Shapes: (B, width, H, W) -> (B, width, H, W).
    """

    def __init__(self, width: int, growth: int, layers: int) -> None:
        super().__init__()
        self.grow = nn.ModuleList(
            [nn.Conv2d(width + i * growth, growth, 3, padding=1) for i in range(layers - 1)])
        self.fuse = nn.Conv2d(width + (layers - 1) * growth, width, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        feats = [h]
        for conv in self.grow:
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), _SLOPE))
        return h + _RESIDUAL_SCALE * self.fuse(torch.cat(feats, 1))


class BasicBlock(nn.Module):
    """``dense_blocks`` dense blocks in a row, with a scaled feature-space residual.

    Shapes: (B, width, H, W) -> (B, width, H, W).
    """

    def __init__(self, width: int, growth: int, dense_blocks: int, dense_layers: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[DenseBlock(width, growth, dense_layers) for _ in range(dense_blocks)])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + _RESIDUAL_SCALE * self.blocks(h)


class Purifier(nn.Module):
    """NRP's purifier P: (B, C, H, W) -> (B, C, H, W) in [0, 1], no input-to-output skip.

    Args:
        in_channels: image channels (1 for Fashion-MNIST, 3 for CIFAR/SVHN).
        width: feature channels of the trunk.
        growth: channels each densely connected convolution adds.
        basic_blocks: number of basic blocks (paper: several).
        dense_blocks: dense blocks per basic block (paper: 3).
        dense_layers: convolutions per dense block (paper: 5).
        output: ``"sigmoid"`` or ``"clamp"``; how outputs are kept in [0, 1].

    ``config`` holds the constructor arguments, so a card can rebuild it
    (``build_model("nrp-purifier", **config)``).

    Example:
        >>> p = Purifier(in_channels=1)
        >>> p(torch.rand(8, 1, 28, 28)).shape
        torch.Size([8, 1, 28, 28])
    """

    arch = "nrp-purifier"

    def __init__(self, in_channels: int = 1, width: int = 16, growth: int = 8, basic_blocks: int = 1,
                 dense_blocks: int = 3, dense_layers: int = 5, output: str = "sigmoid") -> None:
        super().__init__()
        in_channels = check_int_at_least(in_channels, "in_channels", 1)
        width = check_int_at_least(width, "width", 1)
        growth = check_int_at_least(growth, "growth", 1)
        basic_blocks = check_int_at_least(basic_blocks, "basic_blocks", 0)
        dense_blocks = check_int_at_least(dense_blocks, "dense_blocks", 1)
        dense_layers = check_int_at_least(dense_layers, "dense_layers", 1)
        if output not in OUTPUTS:
            raise InputError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.in_channels, self.output = in_channels, output
        self.config: dict[str, Any] = dict(in_channels=in_channels, width=width, growth=growth,
                                           basic_blocks=basic_blocks, dense_blocks=dense_blocks,
                                           dense_layers=dense_layers, output=output)
        self.head = nn.Conv2d(in_channels, width, 3, padding=1)
        self.trunk = nn.Sequential(*[BasicBlock(width, growth, dense_blocks, dense_layers)
                                     for _ in range(basic_blocks)])
        self.tail = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(_SLOPE),
                                  nn.Conv2d(width, in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"the purifier takes (B, {self.in_channels}, H, W) images, got {tuple(x.shape)}")
        out = self.tail(self.trunk(self.head(x)))
        return torch.sigmoid(out) if self.output == "sigmoid" else out.clamp(0.0, 1.0)


class Critic(nn.Module):
    """NRP's critic C: (B, C, S, S) -> (B,) one real-vs-purified logit per image.

    Args:
        in_channels: image channels.
        input_size: side S of the (square) images or crops it judges.
        width: channels of the first block; block k has ``width * 2**k``.
        blocks: number of conv-BN-LReLU blocks, each halving the resolution.

    Example:
        >>> c = Critic(in_channels=3, input_size=32)
        >>> c(torch.rand(4, 3, 32, 32)).shape
        torch.Size([4])
    """

    arch = "nrp-critic"

    def __init__(self, in_channels: int = 1, input_size: int = 28, width: int = 16, blocks: int = 3) -> None:
        super().__init__()
        in_channels = check_int_at_least(in_channels, "in_channels", 1)
        input_size = check_int_at_least(input_size, "input_size", 1)
        width = check_int_at_least(width, "width", 1)
        blocks = check_int_at_least(blocks, "blocks", 1)
        self.in_channels, self.input_size = in_channels, input_size
        self.config: dict[str, Any] = dict(in_channels=in_channels, input_size=input_size, width=width,
                                           blocks=blocks)
        layers: list[nn.Module] = []
        channels, side = in_channels, input_size
        for k in range(blocks):
            out = width * 2**k
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.LeakyReLU(_SLOPE),
                       nn.Conv2d(out, out, 3, stride=2, padding=1), nn.BatchNorm2d(out), nn.LeakyReLU(_SLOPE)]
            channels, side = out, (side + 1) // 2
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.linear = nn.Linear(channels * side * side, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, self.input_size, self.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise InputError(f"the critic takes (B, {expected[0]}, {expected[1]}, {expected[2]}) images, "
                             f"got {tuple(x.shape)}")
        return self.linear(self.body(x)).squeeze(1)


register_architecture(Purifier.arch, Purifier)
register_architecture(Critic.arch, Critic)
