"""RIDE's networks (the paper's Table 3), their seeded initialization and per-step random draws."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
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


def dropout_units(spec: RideNetSpec, n: int, hh: int, ww: int) -> int:
    """Dropout units of one image's step: (n, L, H, W, width) for its L dropout layers."""
    return n * len(spec.dropout_layers) * hh * ww * spec.width


def _draws_bits(dropout: float) -> bool:
    """Whether dropout at ``dropout`` is drawn as one random bit per unit (exact only at p = 1/2)."""
    return dropout == 0.5


def dropout_draw_buffer(groups: int, units: int, dropout: float, dtype: torch.dtype) -> torch.Tensor:
    """Zeroed storage for ``groups`` images' dropout draws (what ``_draw_step`` writes): packed
    random words at p = 1/2, else one uniform per unit. Zero rows give all-zero masks."""
    if _draws_bits(dropout):
        return torch.zeros((groups, -(-units // 32)), dtype=torch.int32)
    return torch.zeros((groups, units), dtype=dtype)


def _draw_step(gen: torch.Generator, dae: bool, n: int, shape: tuple[int, int, int],
               spec: RideNetSpec, dropout: float, dtype: torch.dtype,
               noise_out: torch.Tensor | None = None, dropout_out: torch.Tensor | None = None
               ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One step's numbers for one image, in a fixed order: the DAE's input and target noise
    ``(2, n, C, H, W)`` (DAE modes only), then the dropout draws (if dropout > 0; see
    ``dropout_draw_buffer``). ``*_out`` lets the batched engine write into its buffers.

    At the paper's p = 1/2 each unit's keep/drop is one random bit, 32 from one generator call:
    the same Bernoulli(1/2) as comparing a uniform, at a twentieth of the generator's time (which
    was a fifth of a batched step)."""
    noise = draws = None
    if dae:
        noise = torch.randn((2, n, *shape), generator=gen, dtype=dtype, out=noise_out)
    if dropout > 0 and spec.dropout_layers:
        if dropout_out is None:
            dropout_out = dropout_draw_buffer(1, dropout_units(spec, n, shape[1], shape[2]), dropout, dtype)[0]
        if _draws_bits(dropout):
            draws = dropout_out.random_(-2 ** 31, 2 ** 31, generator=gen)
        else:
            draws = torch.rand(dropout_out.shape, generator=gen, dtype=dtype, out=dropout_out)
    return noise, draws


def _dropout_masks(draws: torch.Tensor, dropout: float, spec: RideNetSpec, n: int, hh: int, ww: int,
                   device: torch.device, dtype: torch.dtype, out: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Inverted-dropout masks (0 or 1/(1-p)) of G networks from their draws ``(G, ...)`` (rows of
    ``dropout_draw_buffer``), one per dropout layer, each ``(n, G * width, H, W)`` in the grouped
    engine's channels-last layout (G = 1: one network's ``(n, width, H, W)``).

    Unit (n, l, h, w, c) of network g is element ``(((n * L + l) * H + h) * W + w) * width + c``
    of its draws (bit order within the words: little-endian bytes, low bit first)."""
    groups, units = draws.shape[0], dropout_units(spec, n, hh, ww)
    if _draws_bits(dropout):
        keep = torch.from_numpy(np.unpackbits(draws.numpy().view(np.uint8), axis=1, count=units,
                                              bitorder="little"))
    else:
        keep = draws[:, :units] >= dropout
    layers = len(spec.dropout_layers)
    keep = keep.to(device).view(groups, n, layers, hh, ww, spec.width).permute(1, 2, 3, 4, 0, 5)
    masks = out if out is not None else torch.empty((n, layers, hh, ww, groups, spec.width), dtype=dtype, device=device)
    masks.copy_(keep).div_(1.0 - dropout)
    flat = masks.view(n, layers, hh, ww, groups * spec.width)
    return [flat[:, j].permute(0, 3, 1, 2) for j in range(layers)]


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
