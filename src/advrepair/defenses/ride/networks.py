"""RIDE's networks (the paper's Table 3), their seeded initialization and per-step random draws."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


MODES = ("ride", "dae", "dip", "idip")
# The batched engine runs a multiple of this many networks (padding with inert zero networks):
# oneDNN picks its grouped-convolution kernels, and so its summation order, by the channel
# count; with a multiple of 8 groups an image's gradients were bit-identical for every batch
# size, position and thread count we tried (AVX2 CPU), without it they were not.
GROUP_MULTIPLE = 8
DIP_NOISE_SCALE = 0.1


@dataclass(frozen=True)
class RideNetSpec:
    """A reconstruction network of Table 3: ``depth`` 3x3 conv layers (the last is the output
    layer), hidden ``width``, dropout after the (1-based) hidden layers in ``dropout_layers``."""

    width: int
    depth: int
    dropout_layers: tuple[int, ...]


RIDE_NETWORKS: dict[str, RideNetSpec] = {
    "mnist": RideNetSpec(width=16, depth=4, dropout_layers=(2, 3)),
    "cifar": RideNetSpec(width=32, depth=5, dropout_layers=(2, 3)),
    "imagenet": RideNetSpec(width=32, depth=8, dropout_layers=(4, 5, 6)),
}


def resolve_network(network: str | RideNetSpec, channels: int) -> RideNetSpec:
    """The spec for ``network`` ("auto": "mnist" for 1 channel, else "cifar")."""
    if isinstance(network, RideNetSpec):
        return network
    if network == "auto":
        return RIDE_NETWORKS["mnist" if channels == 1 else "cifar"]
    return RIDE_NETWORKS[network]


def _layer_channels(spec: RideNetSpec, channels: int) -> list[tuple[int, int]]:
    """(in, out) planes of each conv layer."""
    planes = [channels] + [spec.width] * (spec.depth - 1) + [channels]
    return list(zip(planes[:-1], planes[1:]))


# --------------------------------------------------------------------------------------------
# Per-image random draws, shared by the batched engine and the sequential reference so both see
# the same numbers in the same order.
# --------------------------------------------------------------------------------------------

def _draw_init(gen: torch.Generator, spec: RideNetSpec, channels: int,
               dtype: torch.dtype) -> list[torch.Tensor]:
    """[w1, b1, w2, b2, ...] for one image: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    out = []
    for cin, cout in _layer_channels(spec, channels):
        bound = 1.0 / math.sqrt(cin * 9)
        out.append((torch.rand((cout, cin, 3, 3), generator=gen, dtype=dtype) * 2 - 1) * bound)
        out.append((torch.rand((cout,), generator=gen, dtype=dtype) * 2 - 1) * bound)
    return out


def _draw_step(gen: torch.Generator, dae: bool, n: int, shape: tuple[int, int, int],
               spec: RideNetSpec, dropout: float, dtype: torch.dtype,
               noise_out: torch.Tensor | None = None, uniform_out: torch.Tensor | None = None
               ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One step's numbers for one image, in a fixed order: the DAE's input and target noise
    ``(2, n, C, H, W)`` (DAE modes only), then the dropout uniforms ``(n, L, width, H, W)`` for the
    L dropout layers (if dropout > 0). ``*_out`` lets the batched engine write into its buffers."""
    noise = uniform = None
    if dae:
        noise = torch.randn((2, n, *shape), generator=gen, dtype=dtype, out=noise_out)
    if dropout > 0 and spec.dropout_layers:
        uniform = torch.rand((n, len(spec.dropout_layers), spec.width, shape[1], shape[2]),
                             generator=gen, dtype=dtype, out=uniform_out)
    return noise, uniform


def _dropout_masks(uniform: torch.Tensor, dropout: float) -> torch.Tensor:
    """Inverted-dropout masks (0 or 1/(1-p)) from uniforms, element-wise."""
    return (uniform >= dropout).to(uniform.dtype) / (1.0 - dropout)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


class RideNetwork(nn.Module):
    """One image's reconstruction network h(z; w) of Table 3 (reference, unbatched).

    Shapes: (n, C, H, W) -> (n, C, H, W) in (0, 1).

    Args:
        spec: layer widths and dropout positions.
        channels: image channels C.
        dropout: dropout probability. Masks are passed explicitly to ``forward`` (one per
            dropout layer, already scaled by 1/(1-p)); without masks no dropout is applied.

    Example:
        >>> h = RideNetwork(RIDE_NETWORKS["mnist"], channels=1)
        >>> h(torch.rand(1, 1, 28, 28)).shape
        torch.Size([1, 1, 28, 28])
    """

    def __init__(self, spec: RideNetSpec, channels: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.spec = spec
        self.dropout = dropout
        self.convs = nn.ModuleList([nn.Conv2d(cin, cout, 3, padding=1)
                                    for cin, cout in _layer_channels(spec, channels)])

    def load_flat(self, flat: list[torch.Tensor]) -> None:
        """Set weights from ``[w1, b1, w2, b2, ...]``."""
        with torch.no_grad():
            for k, conv in enumerate(self.convs):
                assert isinstance(conv, nn.Conv2d) and conv.bias is not None
                conv.weight.copy_(flat[2 * k])
                conv.bias.copy_(flat[2 * k + 1])

    def forward(self, z: torch.Tensor, masks: list[torch.Tensor] | None = None) -> torch.Tensor:
        h = z
        m = 0
        for k, conv in enumerate(self.convs, start=1):
            h = conv(h)
            if k == len(self.convs):
                break
            h = F.relu(h)
            if masks and k in self.spec.dropout_layers:
                h = h * masks[m]
                m += 1
        return torch.sigmoid(h)


# --------------------------------------------------------------------------------------------
# The batched engine: B networks as one grouped convolution, per-model Adam on stacked tensors
# --------------------------------------------------------------------------------------------
